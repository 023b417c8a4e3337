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


@pytest.fixture(scope="session")
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
    proc = _popen(out, delay=2.0)  # ≥ 8 s of writes per cell: the sweep cannot finish before the interrupt lands
    _wait_for(proc, lambda: bool(_finished(out)))
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        # Seen once under heavy load: the interrupt was lost (a library callback swallowed it) and the sweep
        # went on. A user presses Ctrl-C again; the second one must stop it just as cleanly.
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


# --- identity, integrity and concurrency of a run directory (in-process, on copies of one finished run) -------

from jaxnorm import integrity, plots, results, rundir  # noqa: E402
from jaxnorm.config import ConfigError  # noqa: E402
from tiny_sweep import tiny_spec  # noqa: E402

SPEC2 = tiny_spec(lrs=(1e-3, 2e-3))


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """A finished 2-cell run, written in this process; tests damage copies of it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    sweep_lib.run(SPEC2, out, progress=False)
    return out


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out, [c.cell_id for c in sweep_lib.expand(SPEC2)]


def _numbers(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).sort_values(["cell_id", "seed"]).reset_index(drop=True)


def test_results_hold_only_the_sweeps_intact_cells_and_resume_redoes_the_rest(finished, tmp_path, capsys):
    """A stray cell from another sweep and a summary.json copied from another cell: neither lands in the
    results (one warning line each); the resume redoes the overwritten cell and ends as the original."""
    import shutil
    out, (a, b) = _copy(finished, tmp_path)
    stray = "L2-pre_ln-layernorm-dot-adamw-none-lr0.005-deadbeef"
    shutil.copytree(out / "cells" / a, out / "cells" / stray)
    shutil.copy(out / "cells" / a / "summary.json", out / "cells" / b / "summary.json")
    with pytest.warns(results.RunDirWarning) as caught:
        df = results.load(out)
    messages = [str(w.message) for w in caught]
    assert any(stray in m and "not in its sweep" in m for m in messages)
    assert any(b in m and "summary.json belongs to another cell" in m for m in messages)
    assert list(df.cell_id.unique()) == [a] and not df.duplicated(["cell_id", "seed"]).any()

    with pytest.warns(results.RunDirWarning, match=stray):
        df = sweep_lib.run(SPEC2, out, progress=False)
    assert f"redo: cell {b}: summary.json belongs to another cell" in capsys.readouterr().err
    pd.testing.assert_frame_equal(_numbers(df), _numbers(results.load(finished)), check_exact=False, rtol=1e-6)
    assert "Cells finished: 2 / 2" in (out / "report.md").read_text()


@pytest.mark.parametrize("damage", ["truncate metrics", "flip layers byte", "delete layers", "garbage summary",
                                    "escaping cell_id"])
def test_a_damaged_cell_is_skipped_when_read_and_redone_on_resume(finished, tmp_path, damage, capsys):
    out, (a, b) = _copy(finished, tmp_path)
    cell = out / "cells" / b
    if damage == "truncate metrics":
        data = (cell / "metrics.jsonl").read_bytes()
        (cell / "metrics.jsonl").write_bytes(data[: len(data) // 2])
        file, problem = "metrics.jsonl", "is truncated"
    elif damage == "flip layers byte":
        data = bytearray((cell / "layers.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (cell / "layers.npz").write_bytes(bytes(data))
        file, problem = "layers.npz", "is corrupt"
    elif damage == "delete layers":
        (cell / "layers.npz").unlink()
        file, problem = "layers.npz", "is missing"
    elif damage == "garbage summary":
        (cell / "summary.json").write_bytes(b"\x00garbage{")
        file, problem = "summary.json", "is unreadable"
    else:
        summary = json.loads((cell / "summary.json").read_text())
        (cell / "summary.json").write_text(json.dumps({**summary, "cell_id": "../../x"}))
        file, problem = "summary.json", "belongs to another cell"

    if damage == "flip layers byte":  # sizes are checked on every load, hashes when a file is read
        assert list(results.load(out).cell_id.unique()) == [a, b]
    else:
        with pytest.warns(results.RunDirWarning, match=f"{b}: {file} {problem}"):
            df = results.load(out)
        assert list(df.cell_id.unique()) == [a]
    assert set(results.load_metrics(out).cell_id) <= {a, b}  # never a traceback; never outside the run directory
    if damage in ("flip layers byte", "delete layers"):
        with pytest.raises(integrity.DamagedCell, match=f"cell {b}: layers.npz"):
            results.load_layers(out, b)
    with pytest.raises(integrity.DamagedCell, match="not a cell id"):
        results.load_layers(out, "../../x")
    assert plot_main(out) == 0  # figures of the intact cell; the damaged one named, not a traceback

    df = sweep_lib.run(SPEC2, out, progress=False)
    assert f"redo: cell {b}: {file} {problem}" in capsys.readouterr().err
    pd.testing.assert_frame_equal(_numbers(df), _numbers(results.load(finished)), check_exact=False, rtol=1e-6)
    integrity.verify_cell(cell)


def plot_main(out: Path) -> int:
    import importlib.util
    spec = importlib.util.spec_from_file_location("plot_sweep", ROOT / "scripts" / "plot_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.main([str(out)])


def test_missing_layers_are_named_in_the_figures(finished, tmp_path):
    out, (a, b) = _copy(finished, tmp_path)
    layers = plots.LayerStore(out)
    (out / "cells" / b / "layers.npz").unlink()
    with pytest.warns(results.RunDirWarning, match=f"{b}: layers.npz is missing.*per-layer figures"):
        with pytest.raises(KeyError):
            layers[b]


def test_without_sweep_json_only_the_same_spec_resumes(finished, tmp_path):
    out, ids = _copy(finished, tmp_path)
    (out / "sweep.json").unlink()
    other = SPEC2.replace(train=SPEC2.train.replace(steps=7))
    with pytest.raises(ConfigError, match=r"^out \(--out\): .*no sweep.json and holds 2 cell\(s\) that are not in this spec"):
        sweep_lib.validate(other, out)
    assert not (out / "sweep.json").exists()
    df = sweep_lib.run(SPEC2, out, progress=False)  # the same spec: nothing to redo, sweep.json written again
    assert json.loads((out / "sweep.json").read_text())["cell_ids"] == ids and df.cell_id.nunique() == 2


def test_sweep_json_is_created_once_and_read_back(tmp_path):
    """Two different specs racing for a fresh directory: the second creation finds the first's and refuses."""
    out = tmp_path / "run"
    out.mkdir()
    other = SPEC2.replace(seeds=3)
    rundir.create_sweep_json(out, SPEC2, [c.cell_id for c in sweep_lib.expand(SPEC2)])
    before = (out / "sweep.json").read_bytes()
    with pytest.raises(ConfigError, match="different sweep"):
        rundir.create_sweep_json(out, other, [c.cell_id for c in sweep_lib.expand(other)])
    assert (out / "sweep.json").read_bytes() == before and not list(out.glob("*.tmp"))


def test_a_resume_under_another_setting_refuses_unless_allowed(finished, tmp_path):
    out, (a, b) = _copy(finished, tmp_path)
    summary_path = out / "cells" / a / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert set(rundir.SETTING_KEYS) <= set(summary["setting"])
    summary["setting"] = {**summary["setting"], "device_count": 99}
    summary_path.write_text(json.dumps(summary))
    now = rundir.run_setting()["device_count"]
    with pytest.raises(ConfigError, match=rf"^setting \(--allow-mixed\): .*device_count=99 -> {now}"):
        sweep_lib.validate(SPEC2, out)
    sweep_lib.run(SPEC2, out, progress=False, allow_mixed=True)
    report = (out / "report.md").read_text()
    assert "## Mixed settings" in report and f"device_count=99: 1 cells ({a})" in report
    assert f"device_count={now}: 1 cells ({b})" in report


def test_temporary_files_of_live_processes_are_kept(tmp_path):
    live = tmp_path / f".config.json.{os.getppid()}.abc123.tmp"
    dead = tmp_path / ".config.json.999999999.def456.tmp"
    old = tmp_path / ".config.json.xyz.tmp"  # the format before pids were in the name
    for p in (live, dead, old):
        p.write_text("x")
    assert rundir.remove_dead_temps(tmp_path) == 2
    assert live.exists() and not dead.exists() and not old.exists()


def test_a_dead_processs_cell_lock_is_free(tmp_path):
    """The lock of a process killed while training a cell is released by the kernel: no stale lock."""
    (tmp_path / ".locks").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               f"fd = os.open({str(tmp_path / '.locks' / 'c.lock')!r}, os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with rundir.claim_cell(tmp_path, "c", wait=False) as claimed:
        assert not claimed
    holder.kill()
    holder.wait()
    with rundir.claim_cell(tmp_path, "c", wait=False) as claimed:
        assert claimed


def test_two_identical_runs_share_one_directory_and_train_each_cell_once(tmp_path, monkeypatch):
    import threading
    calls, real = [], sweep_lib.run_cell
    slow = threading.Event()

    def counting(cell, *args, **kwargs):
        calls.append(cell.cell_id)
        slow.wait(0.5)  # both runs overlap on the first cell
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(sweep_lib, "run_cell", counting)
    out, errors = tmp_path / "run", []

    def one():
        try:
            sweep_lib.run(SPEC2, out, progress=False)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(calls) == sorted(c.cell_id for c in sweep_lib.expand(SPEC2))
    assert len(results.load(out)) == 2 * SPEC2.seeds and not list(out.rglob("*.tmp"))


def test_two_identical_commands_on_one_directory_both_finish_and_train_each_cell_once(tmp_path):
    """Two real CLI processes on one run directory (the cell lock is a kernel flock between processes): both
    exit 0, and each cell's config.json, rewritten whenever a cell (re)starts, is written exactly once."""
    out = tmp_path / "run"
    procs = [_popen(out, 0.2) for _ in range(2)]
    inodes: dict[str, set[int]] = {}
    while any(p.poll() is None for p in procs):
        for config in (out / "cells").glob("*/config.json") if (out / "cells").exists() else ():
            try:
                inodes.setdefault(config.parent.name, set()).add(config.stat().st_ino)
            except FileNotFoundError:  # being replaced right now
                pass
        time.sleep(0.02)
    for p in procs:
        assert p.returncode == 0, p.stderr.read()[-2000:]
    assert len(inodes) == N_CELLS and all(len(v) == 1 for v in inodes.values()), inodes
    assert _finished(out) == set(inodes) and len(results.load(out)) == N_CELLS * SEEDS


def test_a_failure_drawing_figures_exits_1_with_one_line_and_a_rerun_draws_them(finished, tmp_path, monkeypatch, capsys):
    import errno
    out, _ = _copy(finished, tmp_path)
    for p in [out / "report.md", *(out / "figures").iterdir()]:
        p.unlink()
    real = rundir.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).suffix in (".png", ".md"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(rundir, "atomic_write_bytes", full_disk)
    argv = [*FLAGS, "--lrs", "1e-3,2e-3", "--out", str(out)]
    assert depth_sweep.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: report (") and "No space left" in err[0], err
    assert not (out / "report.md").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(rundir, "atomic_write_bytes", real)
    assert depth_sweep.main(argv) == 0
    assert (out / "report.md").is_file() and (out / "figures" / "loss_curves.png").is_file()


def test_sigterm_stops_cleanly_with_resume_hint(tmp_path):
    out = tmp_path / "run"
    proc = _popen(out, delay=0.5)
    _wait_for(proc, lambda: bool(_finished(out)))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    done = _finished(out)
    assert f"terminated (SIGTERM): {len(done)} finished cells are saved in {out}; resume with:" in stderr
    assert not list(out.rglob("*.tmp"))
    _check_intact(out)


def test_chaos_script_tiny(tmp_path):
    """scripts/chaos.py in its smallest form: one kill, damaged files, the final results as uninterrupted."""
    proc = subprocess.run([sys.executable, "scripts/chaos.py", "--kills", "1", "--tiny", "--corrupt-p", "1",
                           "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("results identical") and proc.stdout.startswith("1 kills, ")


def test_sigterm_inside_a_gc_callback_is_not_lost():
    """The handler's exception raised inside a garbage-collector callback (JAX has one) would be printed and
    ignored; it is delivered again and reaches the sweep."""
    script = """
import gc, os, signal, sys
from experiments import depth_sweep as d
signal.signal(signal.SIGTERM, d._on_sigterm)
sys.unraisablehook = d._redeliver_lost_interrupts(sys.unraisablehook)
fired = []
def cb(phase, info):
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # the handler runs here, inside the callback
gc.callbacks.append(cb)
try:
    gc.collect()
    for _ in range(10**7):
        pass
    print("lost")
except d.Terminated:
    print("terminated")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "terminated" and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
