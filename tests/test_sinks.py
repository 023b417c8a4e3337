"""Metric sinks: TensorBoard events and offline W&B runs, read back and compared with the run directory's files;
a resumed or repeated export sends each point once; a missing extra is one line naming it."""

import glob
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import depth_sweep
from jaxnorm import exports, results
from jaxnorm.cell_outputs import CellOutputs
from jaxnorm.sink_points import scalar_tag
from jaxnorm.sweep import run
from tiny_sweep import TINY_CELL_FLAGS, tiny_spec

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
pytest.importorskip("wandb")
import wandb_records  # noqa: E402

SPEC = tiny_spec(lrs=(1e-3, 2e-3))


def _events(out: Path) -> dict[tuple[str, int], "event_accumulator.EventAccumulator"]:
    """(cell id, seed) -> its TensorBoard run, loaded."""
    runs = {}
    for path in sorted((out / "tensorboard").glob("*/seed*")):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0,
                                                                            "images": 0})
        acc.Reload()
        runs[(path.parent.name, int(path.name[4:]))] = acc
    return runs


def _wandb_runs(out: Path) -> list[dict]:
    return [wandb_records.read_run(f) for f in sorted(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb")))]


def _expected_scalars(out: Path, cell_id: str, seed: int) -> dict[str, dict[int, float]]:
    """tag -> {step: value} straight from metrics.jsonl and layers.npz (the end-to-end Jacobian)."""
    expected: dict[str, dict[int, float]] = {}
    for line in (out / "cells" / cell_id / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["seed"] == seed:
            for k, v in row.items():
                if k not in ("step", "seed") and v is not None:
                    expected.setdefault(scalar_tag(k), {})[row["step"]] = float(v)
    layers = results.load_layers(out, cell_id)
    s = list(layers["seeds"]).index(seed)
    expected["jacobian/end_to_end"] = {int(t): float(v) for t, v in zip(layers["jacobian_steps"],
                                                                        layers["jac_end_to_end"][:, s])}
    return expected


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """The tiny sweep run without sinks, then exported: every finished cell reaches the sinks afterwards."""
    out = tmp_path_factory.mktemp("sinks") / "run"
    run(SPEC, out, progress=False)
    assert not (out / "tensorboard").exists()
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_PROJECT", "jaxnorm-test")
    run(SPEC, out, progress=False, outputs=CellOutputs(log=("tensorboard", "wandb"), mirror=str(out) + "-mirror"))
    yield out
    mp.undo()


def test_tensorboard_events_match_the_run_directory(run_dir):
    cells = json.loads((run_dir / "sweep.json").read_text())["cell_ids"]
    runs = _events(run_dir)
    assert sorted(runs) == sorted((c, s) for c in cells for s in (0, 1))
    for (cell_id, seed), acc in runs.items():
        expected = _expected_scalars(run_dir, cell_id, seed)
        assert set(acc.Tags()["scalars"]) == set(expected)
        assert {"train/loss", "train/grad_norm", "eval/loss", "train/lr"} <= set(expected)
        for tag, values in expected.items():
            got = {e.step: e.value for e in acc.Scalars(tag)}
            assert len(acc.Scalars(tag)) == len(values), tag  # one point per step: nothing twice
            assert got.keys() == values.keys(), tag
            np.testing.assert_allclose([got[t] for t in values], list(values.values()), rtol=1e-6, err_msg=tag)
        layers = results.load_layers(run_dir, cell_id)
        s = list(layers["seeds"]).index(seed)
        for tag, name, steps in (("layers/grad_norm/all", "grad_norm/all", "layer_steps"),
                                 ("layers/jac_spectral", "jac_spectral", "jacobian_steps"),
                                 ("layers/branch_ratio/mlp", "branch_ratio", "layer_steps")):
            histograms = acc.Histograms(tag)
            assert [h.step for h in histograms] == list(layers[steps]), tag
            for h, profile in zip(histograms, layers[name][:, s]):
                profile = profile[:, 1] if name == "branch_ratio" else profile
                assert list(h.histogram_value.bucket_limit) == [1.0, 2.0]  # bucket l = layer l
                np.testing.assert_allclose(h.histogram_value.bucket, profile, rtol=1e-6)
        assert acc.Tags()["images"] == ["profiles"]
        assert [i.step for i in acc.Images("profiles")] == list(layers["jacobian_steps"])


def test_wandb_offline_runs_match_the_run_directory(run_dir):
    cells = json.loads((run_dir / "sweep.json").read_text())["cell_ids"]
    found = _wandb_runs(run_dir)
    assert sorted(r["run"].display_name for r in found) == sorted(f"{c}-seed{s}" for c in cells for s in (0, 1))
    assert {r["run"].run_group for r in found} == {exports.sweep_name(run_dir)}
    assert {r["run"].project for r in found} == {"jaxnorm-test"}
    for r in found:
        cell_id, seed = r["config"]["cell_id"], r["config"]["seed"]
        assert r["config"]["cell"]["lr"] in SPEC.lrs and r["config"]["model"]["d_model"] == 16
        expected = _expected_scalars(run_dir, cell_id, seed)
        steps = [row["_step"] for row in r["history"]]
        assert steps == sorted(set(steps))  # one row per step, in order
        for tag, values in expected.items():
            got = {row["_step"]: row[tag] for row in r["history"] if tag in row}
            assert got.keys() == values.keys(), tag
            np.testing.assert_allclose([got[t] for t in values], list(values.values()), rtol=1e-6, err_msg=tag)
        layers = results.load_layers(run_dir, cell_id)
        s = list(layers["seeds"]).index(seed)
        profiles = {row["_step"]: row["layers/grad_norm/all/values"] for row in r["history"]
                    if "layers/grad_norm/all/values" in row}
        assert list(profiles) == list(layers["layer_steps"])
        np.testing.assert_allclose(list(profiles.values()), layers["grad_norm/all"][:, s], rtol=1e-6)


def test_a_repeated_or_interrupted_export_sends_each_cell_once(run_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cells = json.loads((run_dir / "sweep.json").read_text())["cell_ids"]
    before = len(_wandb_runs(run_dir))
    assert exports.export(run_dir, ("tensorboard", "wandb")) == {"tensorboard": [], "wandb": []}
    assert len(_wandb_runs(run_dir)) == before
    # An export cut short after its first cell: the marker lacks the second, which alone is sent again.
    for sink in ("tensorboard", "wandb"):
        marker = exports.read_marker(run_dir, sink)
        del marker[cells[1]]
        (run_dir / "exports" / f"{sink}.json").write_text(json.dumps({"cells": marker}))
    assert exports.export(run_dir, "tensorboard,wandb") == {"tensorboard": [cells[1]], "wandb": [cells[1]]}
    for (cell_id, seed), acc in _events(run_dir).items():  # still one point per step
        assert len(acc.Scalars("train/loss")) == len(_expected_scalars(run_dir, cell_id, seed)["train/loss"])
    again = [(r["config"]["seed"], r["run"].run_id) for r in _wandb_runs(run_dir) if r["config"]["cell_id"] == cells[1]]
    assert len(again) == 4 and len(set(again)) == 2  # each seed's run id twice: W&B resumes it, no second run


def test_the_mirror_holds_every_finished_cell(run_dir):
    mirror = Path(str(run_dir) + "-mirror")
    assert (mirror / "results.csv").read_bytes() == (run_dir / "results.csv").read_bytes()
    assert results.load(mirror).equals(results.load(run_dir))
    assert not (mirror / ".locks").exists() and not list(mirror.rglob(".*.tmp"))


def test_missing_extra_and_bad_names_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jaxnorm\[tensorboard\]'"):
        exports.check_available(("tensorboard",))
    for flags, field in ((["--log", "tensorboard"], "jaxnorm[tensorboard]"), (["--log", "tb"], "--log"),
                         (["--save-params", "all"], "--save-params")):
        with pytest.raises(SystemExit) as e:
            depth_sweep.main([*TINY_CELL_FLAGS, "--no-progress", *flags, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and field in err, err
        assert not (tmp_path / "run").exists()


def test_a_failing_sink_is_a_warning_and_the_sweep_goes_on(run_dir, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable\nmore detail")

    monkeypatch.setattr(exports, "export", unreachable)
    with pytest.warns(UserWarning, match=r"^--log: ConnectionError: api.wandb.ai unreachable; the cells are saved"):
        CellOutputs(log=("wandb",)).after_cell(run_dir)
