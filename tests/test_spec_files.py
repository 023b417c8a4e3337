"""--config (a run's sweep.json, or a .toml/.json file of flags), --print-config, the research flags, --help's
presets and the `jaxnorm-sweep` console script."""

import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from experiments import depth_sweep
from jaxnorm import results
from jaxnorm.sweep_spec import PRESETS
from tiny_sweep import TIMING, TINY_CELL_FLAGS

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [*TINY_CELL_FLAGS, "--no-progress", "--lrs", "1e-3"]


def _main(args, capsys):
    try:
        code = depth_sweep.main(args)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _printed(args, capsys) -> dict:
    code, out, err = _main([*args, "--print-config"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_config_of_a_sweep_json_reruns_the_same_cells(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _main([*FLAGS, "--out", str(first)], capsys)[0] == 0
    code, _, err = _main(["--config", str(first / "sweep.json"), "--no-progress", "--out", str(second)], capsys)
    assert code == 0, err
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (first, second))
    assert a["cell_ids"] == b["cell_ids"] and a["spec"] == b["spec"]
    pd.testing.assert_frame_equal(results.load(first).drop(columns=TIMING), results.load(second).drop(columns=TIMING))
    # without --out it resumes in its own folder: every cell already done
    code, _, err = _main(["--config", str(first / "sweep.json")], capsys)
    assert code == 0 and "1 already done, 0 to run" in err, err
    # flags after it override it, as with a preset
    changed = _printed(["--config", str(first / "sweep.json"), "--lrs", "2e-3", "--steps", "3"], capsys)
    assert changed["spec"]["lrs"] == [2e-3] and changed["spec"]["train"]["steps"] == 3
    assert changed["spec"]["model"] == a["spec"]["model"]
    printed = tmp_path / "printed.json"  # what --print-config prints is itself a spec file
    printed.write_text(json.dumps(_printed(FLAGS, capsys)))
    assert _printed(["--config", str(printed)], capsys)["cell_ids"] == a["cell_ids"]


def test_a_toml_or_json_file_of_flags(tmp_path, capsys):
    toml = tmp_path / "spec.toml"
    toml.write_text('depths = [2, 8]\nblocks = "pre_ln,post_ln"\nbatch_size = 8\nseq-len = 8\nspectrum = true\n'
                    'lrs = [1e-3, 3e-3]\nweight-decay = 0.0\nno-probes = "attention"\nout = "runs/x"\n')
    same_flags = ["--depths", "2,8", "--blocks", "pre_ln,post_ln", "--batch-size", "8", "--seq-len", "8",
                  "--spectrum", "--lrs", "1e-3,3e-3", "--weight-decay", "0", "--no-probes", "attention"]
    from_toml = _printed(["--config", str(toml)], capsys)
    assert from_toml == _printed(same_flags, capsys)
    assert from_toml["spec"]["depths"] == [2, 8] and from_toml["num_cells"] == 8
    assert from_toml["spec"]["probe"]["spectrum"] and not from_toml["spec"]["probe"]["attention"]
    assert _printed(["--config", str(toml), "--depths", "4"], capsys)["spec"]["depths"] == [4]  # flags win
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(tomllib.loads(toml.read_text())))
    assert _printed(["--config", str(as_json)], capsys) == from_toml


@pytest.mark.parametrize("content,suffix,words", [
    ('depth = [2]\n', ".toml", ["unknown key 'depth'", "allowed keys:", "depths", "batch-size"]),
    ('depths = [2\n', ".toml", ["--config", "not valid TOML"]),
    ('{"spec": {}, "extra": 1}', ".json", ["unknown key 'extra'", "allowed keys: spec"]),
    ('{"spec": {"depthz": [2]}}', ".json", ["SweepSpec", "depthz"]),
    ('spectrum = "yes"\n', ".toml", ["spectrum", "true or false"]),
    ('depths: [2]\n', ".yaml", ["--config", ".toml or .json"]),
])
def test_a_bad_spec_file_is_one_line(tmp_path, capsys, content, suffix, words):
    path = tmp_path / f"spec{suffix}"
    path.write_text(content)
    code, _, err = _main(["--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_research_flags_reach_the_spec(capsys):
    spec = _printed(["--first-seed", "3", "--weight-decay", "0", "--b1", "0.8", "--b2", "0.95", "--eps", "1e-6",
                     "--dtype", "bfloat16", "--probe-batch", "3", "--power-iters", "7", "--hutchinson-samples", "2",
                     "--spectral-method", "power", "--eval-batches", "5", "--probe-every", "11",
                     "--no-probes", "grads,alignment"], capsys)["spec"]
    assert spec["train"]["seed"] == 3 and spec["train"]["eval_batches"] == 5
    assert (spec["optim"]["weight_decay"], spec["optim"]["b1"], spec["optim"]["b2"], spec["optim"]["eps"]) == (
        0.0, 0.8, 0.95, 1e-6)
    assert spec["model"]["dtype"] == "bfloat16"
    assert {k: spec["probe"][k] for k in ("probe_batch", "power_iters", "hutchinson_samples", "spectral_method",
                                          "probe_every", "grads", "alignment", "jacobian")} == {
        "probe_batch": 3, "power_iters": 7, "hutchinson_samples": 2, "spectral_method": "power", "probe_every": 11,
        "grads": False, "alignment": False, "jacobian": True}


@pytest.mark.parametrize("flags,field", [
    (["--b1", "1.5"], "--b1"), (["--eps", "-1"], "--eps"), (["--first-seed", "x"], "--first-seed"),
    (["--dtype", "float16"], "--dtype"), (["--no-probes", "grads,nope"], "--no-probes"),
    (["--power-iters", "0"], "--power-iters"), (["--mirror", ""], "--mirror"),
])
def test_bad_research_flags_are_one_line(tmp_path, capsys, flags, field):
    code, _, err = _main([*FLAGS, *flags, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err and "allowed" in err, err
    assert not (tmp_path / "run").exists()


def test_help_shows_defaults_and_every_presets_contents(capsys):
    with pytest.raises(SystemExit):
        depth_sweep.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weight-decay WEIGHT_DECAY decoupled weight decay" in text and "(default 0.01)" in text
    assert "--steps STEPS optimizer steps per cell; 0 = gradients at initialisation only " \
           "(default: the preset's)" in text
    for name, make in PRESETS.items():
        spec = make()
        assert f"{name}: " in text and f"depths {','.join(map(str, spec.depths))}" in text
        assert f"steps={spec.train.steps}" in text


def test_the_console_script_is_the_depth_sweep():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["jaxnorm-sweep"].partition(":")
    assert (module, function) == ("experiments.depth_sweep", "main")
