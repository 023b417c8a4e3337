"""Faults: SIGKILL in the middle of writing a cell, SIGINT, a diverging cell, and reproducibility.

The sweep runs as the real CLI in a subprocess. Every run uses the same tiny cells as tests/test_sweep.py
(only learning rates vary), so they share one set of compiled programs through JAX's persistent
compilation cache. The kill lands inside a cell's file writes thanks to rundir's test hook
JAXNORM_TEST_WRITE_DELAY_S (each cell file waits before its rename).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import depth_sweep
from jaxnorm import sweep as sweep_lib
from jaxnorm.config import OptimConfig, ProbeConfig
from tiny_sweep import TIMING, TINY_CELL_FLAGS

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [*TINY_CELL_FLAGS, "--no-progress", "--lrs", "1e-3,2e-3,3e-3,4e-3"]
N_CELLS, SEEDS = 4, 2


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.depth_sweep", *FLAGS, "--out", str(out)]


def _popen(out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "JAXNORM_TEST_WRITE_DELAY_S": str(delay)}
    return subprocess.Popen(_cmd(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "cells").glob("*/summary.json")} if (out / "cells").exists() else set()


def _wait_for(proc: subprocess.Popen, predicate, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (status {proc.returncode}) before the fault could be injected: "
                        f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the sweep")
        time.sleep(0.05)


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _check_intact(out: Path) -> None:
    """Every file under a final name is complete: JSON parses strictly, npz loads."""
    for p in out.rglob("*.json"):
        _strict_json(p.read_text())
    for p in out.rglob("metrics.jsonl"):
        for line in p.read_text().splitlines():
            _strict_json(line)
    for p in out.rglob("layers.npz"):
        with np.load(p) as z:
            for k in z.files:
                z[k]
    if (out / "results.csv").exists():
        pd.read_csv(out / "results.csv")


def _results(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    return df.sort_values(["cell_id", "seed"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted sweep of the same command. The tests that read it share one xdist worker
    (`xdist_group`, with `--dist loadgroup` in pyproject.toml), so it runs once per session."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.xdist_group("reliability-reference")
def test_sigkill_while_writing_a_cell_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    proc = _popen(out, delay=0.5)

    def writing_second_cell():
        done = _finished(out)
        return bool(done) and any(p.parent.name not in done and p.name.startswith((".layers.npz.", ".summary.json."))
                                  for p in (out / "cells").glob("*/.*.tmp"))
    _wait_for(proc, writing_second_cell)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    done = _finished(out)
    assert 1 <= len(done) < N_CELLS
    interrupted = {p.parent.name for p in (out / "cells").glob("*/.*.tmp")} - done
    assert len(interrupted) == 1  # the kill did land in the middle of writing one cell
    _check_intact(out)
    mtimes = {p: p.stat().st_mtime_ns for d in done for p in (out / "cells" / d).iterdir()}

    rerun = subprocess.run(_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished cells kept, untouched
    assert _finished(out) == _finished(reference) and interrupted <= _finished(out)  # the killed cell was redone
    assert not list(out.rglob("*.tmp"))  # the killed run's temporary files were cleaned up
    _check_intact(out)

    df = _results(out)
    assert len(df) == N_CELLS * SEEDS and not df.duplicated(["cell_id", "seed"]).any()
    pd.testing.assert_frame_equal(df.drop(columns=TIMING), _results(reference).drop(columns=TIMING),
                                  check_exact=False, rtol=1e-6)


def test_sigint_stops_cleanly_with_resume_hint(tmp_path):
    out = tmp_path / "run"
    proc = _popen(out, delay=0.5)
    _wait_for(proc, lambda: bool(_finished(out)))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = _finished(out)
    assert 1 <= len(done) < N_CELLS
    assert f"interrupted: {len(done)} finished cells are saved in {out}; resume with:" in stderr
    assert "-m experiments.depth_sweep" in stderr and f"--out {out}" in stderr
    assert not list(out.rglob("*.tmp"))
    _check_intact(out)
    df = _results(out)
    assert set(df.cell_id) == done and len(df) == len(done) * SEEDS


@pytest.mark.xdist_group("reliability-reference")
def test_rerun_is_identical_and_records_the_environment(tmp_path, reference):
    """The same command, in another process and another directory: identical results (timing aside).
    (Run as a command, as the reference was: `--cpu-devices auto` may split the seeds over CPU devices there,
    which changes float rounding, while JAX in this process keeps its one device.)"""
    proc = subprocess.run(_cmd(tmp_path / "again"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pd.testing.assert_frame_equal(_results(tmp_path / "again").drop(columns=TIMING),
                                  _results(reference).drop(columns=TIMING), check_exact=True)
    env = json.loads((reference / "sweep.json").read_text())["environment"]
    for key in ("jax", "flax", "optax", "numpy", "python", "platform", "device_kind", "git_commit"):
        assert key in env, key
    assert env["jax"] and env["flax"] and env["optax"] and env["device_kind"]


def test_diverging_cell_is_a_result_and_the_sweep_goes_on(tmp_path):
    args = depth_sweep.build_parser().parse_args(
        [*FLAGS, "--blocks", "no_norm", "--optimizers", "sgd", "--lrs", "1e4,1e-3", "--seeds", "1"])
    base = depth_sweep.build_spec(args)
    spec = base.replace(optim=OptimConfig(schedule="constant"), probe=ProbeConfig(jacobian=False),
                        train=base.train.replace(divergence_factor=1e30))  # only non-finite values diverge
    out = tmp_path / "run"
    df = sweep_lib.run(spec, out, progress=False)
    assert len(pd.read_csv(out / "results.csv")) == 2 and df.cell_id.nunique() == 2
    by_lr = {float(r.lr): r for r in df.itertuples()}
    assert not by_lr[1e-3].diverged

    bad = next(c for c in sweep_lib.expand(spec) if c.lr == 1e4)
    summary = _strict_json((out / "cells" / bad.cell_id / "summary.json").read_text())
    seed = summary["per_seed"][0]
    assert seed["diverged"] is True and isinstance(seed["diverged_step"], int)
    assert 0 <= seed["nonfinite_step"] <= seed["diverged_step"] < 6
    assert seed["nonfinite_what"] in ("loss", "gradient", "update")
    if seed["nonfinite_what"] == "gradient":
        assert 0 <= seed["nonfinite_layer"] < 2
    assert by_lr[1e4].diverged and by_lr[1e4].nonfinite_what == seed["nonfinite_what"]
    _check_intact(out)  # non-finite numbers are stored as null: strict JSON everywhere
