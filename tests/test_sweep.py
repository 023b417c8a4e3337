"""The sweep: spec validation and expansion, the real CLI end to end, resume, shards, refusals, presets.

Every training run here uses one tiny configuration (only learning rates and seeds vary), so the whole
file compiles one set of programs; JAX's persistent compilation cache (which `sweep.run` turns on)
shares them with reruns.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import depth_sweep
from jaxnorm import results, rundir, sharding
from jaxnorm import sweep as sweep_lib
from jaxnorm.config import ATTENTIONS, BLOCKS, CLIPS, NORM_FREE_BLOCKS, NORMS, OPTIMIZERS, TASKS, ConfigError
from jaxnorm.sweep import PRESETS, SweepSpec, check_data, expand, parse_clip, preset
from tiny_sweep import TIMING, TINY_CELL_FLAGS, tiny_spec

ROOT = Path(__file__).resolve().parents[1]
# The CLI flags and the in-process spec below describe the same tiny cells (same compiled programs).
TINY_FLAGS = [*TINY_CELL_FLAGS, "--no-progress"]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "experiments.depth_sweep", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def main_inprocess(args, capsys):
    with pytest.raises(SystemExit) as e:
        depth_sweep.main(args)
    return e.value.code, capsys.readouterr().err


# --- spec and expansion -------------------------------------------------------------------------------

def test_parse_clip():
    assert parse_clip("none") == ("none", 1.0)
    assert parse_clip("global_norm:1.0") == ("global_norm", 1.0)
    assert parse_clip("value:0.5") == ("value", 0.5)
    assert parse_clip("agc:0.01") == ("agc", 0.01)
    for bad in ("global_norm", "global_norm:", "agc:-1", "value:0", "foo:1", "none:1", "global_norm:nan"):
        with pytest.raises(ConfigError, match=r"--clip.*allowed: none, global_norm:<c>"):
            parse_clip(bad)


def expected_cells(spec: SweepSpec) -> int:
    blocks_x_norms = sum(1 if b in NORM_FREE_BLOCKS else len(spec.norms) for b in spec.blocks)
    return (len(spec.depths) * blocks_x_norms * len(spec.attentions) * len(spec.optimizers)
            * len(spec.clips) * len(spec.lrs))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parse_and_expand(name):
    spec = preset(name)
    cells = expand(spec)
    assert len(cells) == expected_cells(spec) == spec.num_cells
    assert len({c.cell_id for c in cells}) == len(cells)
    assert PRESETS[name].__doc__ and "python -m experiments" in PRESETS[name].__doc__
    if name == "init":
        assert spec.train.steps == 0 and set(spec.blocks) == set(BLOCKS)
    if name == "quick":  # the default must stay CPU-sized
        assert spec.model.d_model <= 64 and spec.train.steps <= 600 and max(spec.depths) >= 16
    if name == "compare":  # the study in miniature: five placements, AdamW vs RMSprop, with and without clipping
        assert set(spec.blocks) == {"post_ln", "pre_ln", "deepnorm", "admin", "rezero"}
        assert set(spec.optimizers) == {"adamw", "rmsprop"} and set(spec.clips) == {"none", "global_norm:1.0"}
        assert (min(spec.depths), max(spec.depths)) == (2, 48) and len(spec.lrs) == 3 and spec.seeds == 3
        assert spec.train.task == "mlm" and spec.model.d_model <= 64
    if name == "paper":
        assert spec.train.task == "lm" and len(spec.lrs) >= 3 and spec.seeds >= 3 and max(spec.depths) >= 128
    # the spec survives its JSON form (sweep.json) unchanged
    from jaxnorm.sweep_spec import spec_from_dict, spec_to_dict
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


def test_cell_ids_are_stable_across_processes():
    code = ("import json; from jaxnorm.sweep_spec import expand, preset; "
            "print(json.dumps([c.cell_id for c in expand(preset('quick'))]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    ids = [c.cell_id for c in expand(preset("quick"))]
    assert json.loads(out.stdout) == ids
    assert ids[0].startswith("L2-post_ln-layernorm-dot-adamw-none-lr0.01-")
    # the id depends on every config field, not only on the readable prefix
    other = preset("quick").replace(train=preset("quick").train.replace(batch_size=17))
    assert expand(other)[0].cell_id != ids[0] and expand(other)[0].cell_id[:-8] == ids[0][:-8]


def test_norm_free_blocks_get_one_cell_per_norm_axis():
    spec = tiny_spec(lrs=(1e-3,)).replace(blocks=("pre_ln", "rezero"), norms=("layernorm", "rmsnorm"))
    cells = expand(spec)
    assert [(c.block, c.norm) for c in cells] == [("pre_ln", "layernorm"), ("pre_ln", "rmsnorm"), ("rezero", "none")]


def test_text_tasks_versus_causal_tasks(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 40)
    for task, causal in (("lm", True), ("mlm", False)):
        spec = tiny_spec().replace(train=tiny_spec().train.replace(task=task, seq_len=9, text_file=str(corpus)))
        assert {c.model.causal for c in expand(spec)} == {causal}
        check_data(spec)                                   # a text task reads its --text-file
    # mlm is bidirectional: position-mixing norms are allowed, as for the synthetic tasks
    spec = tiny_spec().replace(norms=("batchnorm",), train=tiny_spec().train.replace(task="mlm"))
    assert [c.norm for c in expand(spec)] == ["batchnorm"] * len(spec.lrs)
    for task in ("reverse", "sort", "copy"):
        with pytest.raises(ConfigError, match=r"^TrainConfig\.text_file: .* lm or mlm \(None for other tasks\)$"):
            check_data(tiny_spec().replace(train=tiny_spec().train.replace(task=task, text_file=str(corpus))))


def test_invalid_combination_fails_at_construction():
    with pytest.raises(ConfigError, match="ModelConfig.norm.*batchnorm.*causal"):
        tiny_spec().replace(norms=("layernorm", "batchnorm"), train=tiny_spec().train.replace(task="lm"))
    # the base model is valid (layernorm ignores num_groups); the groupnorm cells are not
    base = tiny_spec().model.replace(num_groups=3)
    with pytest.raises(ConfigError, match="num_groups.*a divisor of d_model=16.*norm=groupnorm"):
        tiny_spec().replace(model=base, norms=("layernorm", "groupnorm"))


# --- the CLI ---------------------------------------------------------------------------------------------

def test_help_lists_every_flag_and_value():
    out = cli("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in ("--preset", "--depths", "--blocks", "--norms", "--attentions", "--optimizers", "--clip", "--lrs",
                 "--seeds", "--steps", "--task", "--batch-size", "--d-model", "--heads", "--text-file", "--out",
                 "--shard", "--no-progress"):
        assert flag in text
    for name in (*BLOCKS, *NORMS, *ATTENTIONS, *OPTIMIZERS, *TASKS, *(c for c in CLIPS if c != "none"), *PRESETS):
        assert name in text, name


@pytest.mark.parametrize("flags,field", [
    (["--blocks", "pre_ln,nope"], "--blocks"),
    (["--depths", "0"], "--depths"),
    (["--clip", "global_norm"], "--clip"),
    (["--lrs", "-1"], "--lrs"),
    (["--lrs", "0"], "--lrs"),
    (["--shard", "2/2"], "--shard"),
    (["--shard", "x"], "--shard"),
    (["--preset", "huge"], "--preset"),
    (["--optimizers", "adamw,sgdd"], "--optimizers"),
    (["--text-file", "/nonexistent/corpus.txt", "--task", "lm"], "text_file"),
    (["--text-file", "/nonexistent/corpus.txt", "--task", "mlm"], "text_file"),
    (["--text-file", __file__], "text_file"),  # a corpus for a synthetic task: refused, not ignored
    (["--heads", "3"], "num_heads"),
    (["--task", "lm", "--norms", "batchnorm"], "norm"),
    (["--seeds", "two"], "--seeds"),
    (["--cpu-devices", "3"], "--cpu-devices"),  # JAX started in this process with 1 CPU device
    (["--distributed"], "--distributed"),  # no multi-host job here (tests/test_multihost.py joins one)
    (["--bogus"], "unrecognized"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(flags, field, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = main_inprocess([*TINY_FLAGS, *flags, "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], err
    assert not out.exists()


def test_bad_input_real_process_exit_status(tmp_path):
    out = tmp_path / "run"
    proc = cli(*TINY_FLAGS, "--blocks", "nope", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "--blocks" in proc.stderr and "allowed: post_ln" in proc.stderr
    assert not out.exists()


def test_cli_end_to_end_and_refuses_a_different_spec(tmp_path):
    out = tmp_path / "run"
    proc = cli(*TINY_FLAGS, "--lrs", "1e-3,3e-3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    sweep_json = json.loads((out / "sweep.json").read_text())
    assert sweep_json["format_version"] == rundir.FORMAT_VERSION
    assert {"jax", "flax", "optax", "numpy", "python", "device_kind", "platform", "git_commit"} <= set(
        sweep_json["environment"])
    assert sweep_json["spec"]["lrs"] == [1e-3, 3e-3] and len(sweep_json["cell_ids"]) == 2
    # --cpu-devices auto: the 2 seeds run on their own CPU devices wherever there are 2 cores
    assert sweep_json["environment"]["device_count"] == sharding.auto_cpu_devices(2)

    cell_dirs = sorted((out / "cells").iterdir())
    assert [d.name for d in cell_dirs] == sorted(sweep_json["cell_ids"])
    for d in cell_dirs:
        assert {p.name for p in d.iterdir()} == {"config.json", "metrics.jsonl", "layers.npz", "summary.json"}
        config = json.loads((d / "config.json").read_text())
        assert set(config) == {"cell", "model", "optim", "train", "probe"}
        assert set(config["cell"]) == {"depth", "block", "norm", "attention", "optimizer", "clip", "lr"}
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        # steps 0, 2, 4 (log_every 2), 5 (last), 6 (final evaluation), for 2 seeds
        assert sorted({r["step"] for r in rows}) == [0, 2, 4, 5, 6] and len(rows) == 10
        assert {"loss", "accuracy", "grad_norm", "grad_norm_clipped", "clipped", "update_norm", "lr",
                "log_z"} <= set(rows[0])
        assert {r["step"] for r in rows if "eval_loss" in r} == {4, 6}
        layers = results.load_layers(out, d.name)
        assert layers["grad_norm/all"].shape == (len(layers["layer_steps"]), 2, 2)
        assert {"layer_steps", "jacobian_steps", "jac_spectral", "eval_steps", "eval_loss", "eval_accuracy"} <= set(layers)
    assert not list(out.rglob("*.tmp"))

    df = results.load(out)
    assert len(df) == 4 and sorted(df.lr.unique()) == [1e-3, 3e-3] and sorted(df.seed.unique()) == [0, 1]
    for col in ("cell_id", "depth", "block", "final_loss", "best_loss", "final_eval_loss", "diverged",
                "grad_ratio_init", "grad_ratio_final", "act_grad_ratio_init", "jac_spectral_max",
                "jac_end_to_end_init", "attn_entropy_min_final", "steps_per_s", "compile_s", "nonfinite_step"):
        assert col in df.columns, col
    assert np.isfinite(df.final_loss).all() and np.isfinite(df.grad_ratio_init).all()
    csv = pd.read_csv(out / "results.csv")
    df_via_csv = pd.read_csv(io.StringIO(df.to_csv(index=False)))  # None and NaN both read back as NaN
    pd.testing.assert_frame_equal(csv.drop(columns=TIMING), df_via_csv.drop(columns=TIMING))
    assert "L2-pre_ln-layernorm-dot-adamw-none-lr0.001" in proc.stdout  # the console summary table

    # the same directory with a different spec is refused, and nothing in it changes
    before = sorted(p.name for p in (out / "cells").iterdir())
    proc = cli(*TINY_FLAGS, "--lrs", "1e-3,5e-3", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "different sweep" in proc.stderr and str(out) in proc.stderr
    assert sorted(p.name for p in (out / "cells").iterdir()) == before


# --- resume and shards ------------------------------------------------------------------------------------

def _interrupt_on_call(monkeypatch, n):
    calls = []
    real = sweep_lib.run_cell

    def fake(cell, *args, **kwargs):
        calls.append(cell.cell_id)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(sweep_lib, "run_cell", fake)
    return calls


def test_resume_skips_finished_cells_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    spec = tiny_spec()
    a, b = tmp_path / "a", tmp_path / "b"
    calls = _interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        sweep_lib.run(spec, a, progress=False)
    done = sorted(p.parent.name for p in (a / "cells").glob("*/summary.json"))
    assert done == sorted(calls[:2])
    assert len(pd.read_csv(a / "results.csv")) == 2 * spec.seeds  # rebuilt before the interrupt propagated
    mtimes = {p: p.stat().st_mtime_ns for p in (a / "cells").glob("*/*")}

    calls = _interrupt_on_call(monkeypatch, 0)
    df = sweep_lib.run(spec, a, progress=False)
    assert sorted(calls) == sorted(c.cell_id for c in expand(spec) if c.cell_id not in done)
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p.parent.name in done)
    assert len(df) == 4 * spec.seeds

    monkeypatch.undo()
    sweep_lib.run(spec, b, progress=False)
    ra, rb = pd.read_csv(a / "results.csv"), pd.read_csv(b / "results.csv")
    pd.testing.assert_frame_equal(ra.drop(columns=TIMING), rb.drop(columns=TIMING), check_exact=False, rtol=1e-6)

    calls = _interrupt_on_call(monkeypatch, 0)
    sweep_lib.run(spec, b, progress=False)  # everything finished: nothing runs
    assert calls == []


def test_shards_cover_the_grid_exactly_once(tmp_path, monkeypatch):
    spec = tiny_spec()
    out = tmp_path / "shared"
    calls = _interrupt_on_call(monkeypatch, 0)
    sweep_lib.run(spec, out, shard=(0, 2), progress=False)
    first = list(calls)
    df = sweep_lib.run(spec, out, shard=(1, 2), progress=False)
    second = calls[len(first):]
    ids = [c.cell_id for c in expand(spec)]
    assert first == ids[0::2] and second == ids[1::2]
    assert set(first).isdisjoint(second) and set(first) | set(second) == set(ids)
    assert sorted(df.cell_id.unique()) == sorted(ids)
    assert len(pd.read_csv(out / "results.csv")) == len(ids) * spec.seeds
    with pytest.raises(ConfigError, match="--shard"):
        sweep_lib.run(spec, out, shard=(2, 2), progress=False)


def test_run_refuses_a_different_spec_before_writing(tmp_path):
    out = tmp_path / "run"
    spec = tiny_spec()
    out.mkdir()
    rundir.write_sweep_json(out, spec, [c.cell_id for c in expand(spec)])
    with pytest.raises(ConfigError, match="different sweep.*new --out"):
        sweep_lib.run(spec.replace(seeds=3), out, progress=False)
    assert not (out / "cells").exists()


def test_remedy_flags_reach_the_spec():
    """Issue-9 remedies are reachable from the CLI: inits, Admin mode, depth-μP α, z-loss, probe options."""
    from experiments.depth_sweep import build_parser, build_spec
    args = build_parser().parse_args(["--blocks", "admin,depth_mup,b2t,normformer,subln", "--init", "ds_init",
                                      "--admin-mode", "closed_form", "--depth-mup-alpha", "1", "--z-loss", "1e-4",
                                      "--spectrum", "--amplification", "--schedule", "inverse_sqrt",
                                      "--warmup-steps", "7", "--skip-nonfinite"])
    spec = build_spec(args)
    assert spec.blocks == ("admin", "depth_mup", "b2t", "normformer", "subln")
    assert (spec.model.init, spec.model.admin_mode, spec.model.depth_mup_alpha) == ("ds_init", "closed_form", 1.0)
    assert spec.train.z_loss == 1e-4 and spec.probe.spectrum and spec.probe.amplification
    assert (spec.optim.schedule, spec.optim.warmup_steps, spec.optim.skip_nonfinite) == ("inverse_sqrt", 7, True)
    cells = expand(spec)
    assert {c.model.init for c in cells} == {"ds_init"} and {c.train.z_loss for c in cells} == {1e-4}
