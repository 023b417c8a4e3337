"""The run directory on disk: atomic writes, `sweep.json`, and what one finished cell writes.

```
<out>/sweep.json                    the resolved spec + format version + environment
<out>/cells/<cell_id>/config.json   {"cell": axes, "model", "optim", "train", "probe"}
<out>/cells/<cell_id>/metrics.jsonl one object per (logged step, seed)
<out>/cells/<cell_id>/layers.npz    History.layers / jacobian / eval arrays
<out>/cells/<cell_id>/checkpoints/  with --save-params: each seed's parameters (jaxnorm.checkpoints)
<out>/cells/<cell_id>/summary.json  written last: its presence means the cell is done
<out>/results.csv                   one row per (cell, seed), rebuilt from the summaries of sweep.json's cells
<out>/.locks/<cell_id>.lock         held (flock) by the process training that cell
```
Every file is written to a temporary name in its own directory (`.<name>.<pid>.<random>.tmp`), fsynced and
`os.replace`d into place, so a killed run never leaves a truncated file under a final name. JSON is strict:
a non-finite number is written as null (the `nonfinite_*` and `diverged` fields say what happened). A cell
is trained only by the process holding its lock (`claim_cell`); that process first deletes the temporary
files that dead processes left in its directory, never a live process's. summary.json records the size and
sha256 of the cell's other files and the setting that can change its numbers (`run_setting`).

Test hook: with the environment variable JAXNORM_TEST_WRITE_DELAY_S=<seconds> set, every atomic
write of a file inside a cell directory sleeps that long after writing its temporary file and before
renaming it into place, so a test can kill the process in the middle of writing a cell
(tests/test_reliability.py). Unset (the default) it costs one environment lookup per file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import json
import math
import os
import platform
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnorm.cell_stats import FINAL_WINDOW, summarize_seed  # noqa: F401 (FINAL_WINDOW re-exported)
from jaxnorm import metrics
from jaxnorm.config import ConfigError
from jaxnorm.history import History
from jaxnorm.integrity import manifest
from jaxnorm.sweep_spec import Cell, SweepSpec, spec_to_dict

FORMAT_VERSION = 1
METRIC_KEYS = metrics.names(jsonl=True)  # the per-step scalars of the metric registry


# --- atomic files ---------------------------------------------------------------------------------------

def temp_path(path: Path) -> Path:
    """A fresh temporary name next to `path` (`TEMP_NAME`: the writer's pid in it, so a dead writer's
    temporaries can be told from a live one's)."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def write_temp(tmp: Path, data: bytes) -> None:
    """Create `tmp` (it must not exist) with the umask's permissions (a shared run directory needs them), write
    `data` and fsync it. Callers name the file first (`temp_path`) and call this inside their `try`, so that
    an interrupt (SIGTERM, Ctrl-C) arriving just after it was created still finds the name to remove."""
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_temp(tmp, data)
        _test_write_delay(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


def temp_owner_alive(tmp: Path) -> bool:
    """Whether the process that named temporary file `tmp` (its pid is in the name) is still running.
    A name without a pid (an older format) counts as dead; the caller's own temporaries as alive."""
    m = TEMP_NAME.fullmatch(Path(tmp).name)
    if m is None:
        return False
    pid = int(m["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_dead_temps(directory: Path) -> int:
    """Delete the temporary files in `directory` whose writer has died (never a live process's, which
    would make it crash on its rename); returns how many."""
    removed = 0
    for tmp in Path(directory).glob(".*.tmp"):
        if not temp_owner_alive(tmp):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _test_write_delay(path: Path) -> None:
    """The JAXNORM_TEST_WRITE_DELAY_S hook (see the module docstring); only for files of a cell."""
    delay = os.environ.get("JAXNORM_TEST_WRITE_DELAY_S")
    if delay and path.parent.parent.name == "cells":
        time.sleep(float(delay))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n").encode())


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def jsonable(x: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --- sweep.json -----------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """Library versions, the device and the git commit of the jaxnorm checkout (None if not a checkout)."""
    import flax
    import jax
    import optax

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10)
        git_commit = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git_commit = None
    from jaxnorm.benchmarking.peaks import cpu_info

    device = jax.devices()[0]
    return {"python": platform.python_version(), "cpu": f"{cpu_info().get('model name', 'unknown CPU')}, "
            f"{os.cpu_count()} cores", "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "platform": device.platform,
            "device_kind": device.device_kind, "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "host": platform.node(), "argv": sys.argv,
            "command": typed_command(),
            "git_commit": git_commit or None}


SETTING_KEYS = ("platform", "device_kind", "device_count", "jax", "jaxlib", "flax", "optax", "git_commit")


@functools.lru_cache(maxsize=1)
def run_setting() -> dict[str, Any]:
    """What besides the spec can change a cell's numbers: the devices it runs on (kind and count: seeds split
    over devices round differently), the library versions and the jaxnorm commit. Stored in every
    summary.json, so a resume under another setting is noticed (jaxnorm.sweep) and the report can say
    which cells ran how."""
    import jax
    import jaxlib

    env = environment()
    return {"platform": env["platform"], "device_kind": env["device_kind"],
            "device_count": jax.local_device_count(), "jax": env["jax"], "jaxlib": jaxlib.__version__,
            "flax": env["flax"], "optax": env["optax"], "git_commit": env["git_commit"]}


def setting_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key=old -> new` for each setting key whose value differs."""
    return [f"{k}={old.get(k)} -> {new.get(k)}" for k in SETTING_KEYS if old.get(k) != new.get(k)]


def typed_command() -> str:
    """The command line as the user typed it (`python -m experiments.depth_sweep --depths 2,8`), not the
    resolved script path of sys.argv; the interpreter is written as `python`."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return shlex.join(["python", *argv[1:]])


def _out_error(out_dir: Any, problem: str) -> ConfigError:
    return ConfigError(f"out (--out): {str(out_dir)!r} {problem}; allowed: a new or existing run directory "
                       "that this user can create and write")


def check_out_dir(out_dir: Path) -> None:
    """ConfigError naming --out unless `out_dir` can be a run directory: a non-empty path whose nearest
    existing folder (itself or above) is a directory this process can write in. Writing is tried (a
    probe folder created and removed at once), since permission bits do not tell for root, read-only
    mounts or /proc; the check writes nothing that stays."""
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise _out_error(out_dir, "is empty")
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is" if p == out_dir else f"is inside {str(p)!r}, which is"
                raise _out_error(out_dir, f"{what} not a directory")
            _probe_writable(out_dir, p)
            return


def _probe_writable(out_dir: Path, existing: Path) -> None:
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=f".jaxnorm-probe-{os.getpid()}-"))
    except OSError as e:
        where = "" if existing == out_dir else f" ({str(existing)!r}, the nearest existing folder)"
        raise _out_error(out_dir, f"is not writable{where}: {e.strerror or type(e).__name__}") from None


def check_foreign_cells(out_dir: Path, cell_ids: list[str]) -> None:
    """Without a sweep.json, a run directory is resumed only if every cell directory in it belongs to the
    spec: cells of another spec would otherwise mix into the results."""
    cells = Path(out_dir) / "cells"
    if (Path(out_dir) / "sweep.json").exists() or not cells.is_dir():
        return
    foreign = sorted(p.name for p in cells.iterdir() if p.is_dir() and p.name not in set(cell_ids))
    if foreign:
        raise ConfigError(f"out (--out): run directory {str(out_dir)!r} has no sweep.json and holds {len(foreign)} "
                          f"cell(s) that are not in this spec ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); allowed: the spec that wrote them, or a new --out")


def check_sweep_json(out_dir: Path, spec: SweepSpec) -> bool:
    """True if `out_dir` already holds this spec's sweep; ConfigError if it holds a different one."""
    check_out_dir(out_dir)
    path = Path(out_dir) / "sweep.json"
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text())
        same = stored.get("spec") == spec_to_dict(spec) and stored.get("format_version") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        raise ConfigError(f"out (--out): run directory {str(out_dir)!r} holds a different sweep (see its sweep.json); "
                          f"allowed: the same spec to resume it, or a new --out directory")
    return True


def sweep_json_bytes(spec: SweepSpec, cell_ids: list[str]) -> bytes:
    data = {"format_version": FORMAT_VERSION, "spec": spec_to_dict(spec), "num_cells": len(cell_ids),
            "cell_ids": cell_ids, "environment": environment()}
    return (json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n").encode()


def write_sweep_json(out_dir: Path, spec: SweepSpec, cell_ids: list[str]) -> None:
    atomic_write_bytes(Path(out_dir) / "sweep.json", sweep_json_bytes(spec, cell_ids))


def create_sweep_json(out_dir: Path, spec: SweepSpec, cell_ids: list[str]) -> None:
    """Create sweep.json only if no process has (a complete temporary file hard-linked to the final name,
    which fails if it exists), then read it back: of two different specs started at once into one
    directory, exactly one wins and the other gets check_sweep_json's ConfigError."""
    path = Path(out_dir) / "sweep.json"
    tmp = temp_path(path)
    try:
        write_temp(tmp, sweep_json_bytes(spec, cell_ids))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    check_sweep_json(out_dir, spec)


@contextlib.contextmanager
def claim_cell(out_dir: Path, cell_id: str, *, wait: bool):
    """Hold the cell's lock while training it; yields False (at once) if another process holds it and
    `wait` is False. The lock is an flock on <out>/.locks/<cell_id>.lock: the kernel releases it when
    its holder dies (SIGKILL, OOM, a crashed node's NFS lease), so a stale lock needs no cleanup."""
    locks = Path(out_dir) / ".locks"
    locks.mkdir(exist_ok=True)
    fd = os.open(locks / f"{cell_id}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


# --- one cell -------------------------------------------------------------------------------------------

def cell_dir(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "cells" / cell_id


def is_done(out_dir: Path, cell_id: str) -> bool:
    return (cell_dir(out_dir, cell_id) / "summary.json").exists()


def write_config(path: Path, cell: Cell) -> None:
    """Create the cell's directory (removing temporary files dead runs left there) and its config.json.
    The caller holds the cell's lock (`claim_cell`)."""
    path.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    atomic_write_json(path / "config.json", {"cell": cell.axes(), **cell.configs()})


def metrics_rows(h: History) -> list[dict[str, Any]]:
    """One dict per (logged step, seed): every `log_every`-th step, the last step, and evaluation points.

    Metrics at step t are those of update t (its loss is that of the parameters after t updates). An
    evaluation at step e (parameters after e updates) is attached to the row of step e; the final
    evaluation after the last update has step = steps run and carries only the eval fields."""
    n = h.metrics["loss"].shape[0]
    log_every = int(h.config["train"]["log_every"])
    evals = {int(e): i for i, e in enumerate(h.eval_steps)}
    steps = sorted(set(range(0, n, log_every)) | {n - 1} | set(evals))
    rows = []
    for t in steps:
        for s, seed in enumerate(h.seeds):
            row: dict[str, Any] = {"step": t, "seed": seed}
            if t < n:
                row.update({k: h.metrics[k][t, s] for k in METRIC_KEYS if k in h.metrics})
            if t in evals:
                row["eval_loss"] = h.eval_loss[evals[t], s]
                row["eval_accuracy"] = h.eval_accuracy[evals[t], s]
            rows.append(jsonable(row))
    return rows


def layer_arrays(h: History) -> dict[str, np.ndarray]:
    """Everything per layer in one flat dict (names as in History: "grad_norm/all", "jac_spectral", ...)."""
    arrays = dict(h.layers)
    arrays.update(h.jacobian)
    arrays.update(seeds=np.asarray(h.seeds), layer_steps=np.asarray(h.layer_steps),
                  jacobian_steps=np.asarray(h.jacobian_steps), eval_steps=np.asarray(h.eval_steps),
                  eval_loss=np.asarray(h.eval_loss), eval_accuracy=np.asarray(h.eval_accuracy))
    return arrays


def summarize(h: History, cell: Cell, wall_s: float) -> dict[str, Any]:
    """summary.json of a cell: its axes, one dict of numbers per seed, timing and the resolved configs.

    Per seed: `initial_loss` (step 0, the L_0 of LR sensitivity); `final_loss`/`final_accuracy` = mean
    train loss/accuracy over the last FINAL_WINDOW steps run; `best_loss` = lowest FINAL_WINDOW-step
    mean before divergence; `final_eval_*` after the last update, `best_eval_loss` over all evaluations;
    `diverged`/`diverged_step`; `max_grad_norm` (global, before clipping); `grad_ratio_init/final` =
    ‖∇θ_first layer‖/‖∇θ_last layer‖ at the first/last per-layer profile, `act_grad_ratio_*` the same for
    ‖∂loss/∂x_l‖; `jac_spectral_max` = max over layers of ‖∂x_{l+1}/∂x_l‖₂ at the first Jacobian probe
    (`_final` at the last); `jac_end_to_end_init/final`; `attn_entropy_min_final` over layers and heads;
    `nonfinite_step/what/layer` of the first non-finite value. Per cell: compile_s, run_s, steps_per_s, wall_s.
    """
    return jsonable({
        "format_version": FORMAT_VERSION,
        "cell_id": cell.cell_id,
        "cell": cell.axes(),
        "steps_run": int(h.metrics["loss"].shape[0]) if cell.train.steps else 0,
        "per_seed": [summarize_seed(h, s) for s in range(h.num_seeds)],
        "timing": dict(h.timing, wall_s=wall_s),
        "resolved": h.config,
    })


def write_cell(path: Path, cell: Cell, h: History, wall_s: float,
               extra_files: list[str] | tuple = ()) -> dict[str, Any]:
    """Write metrics.jsonl, layers.npz, then (last) summary.json with their sizes and hashes, and those of
    `extra_files` (relative paths the caller wrote into the cell first: its checkpoints); returns the summary."""
    rows = metrics_rows(h)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    atomic_write_bytes(path / "metrics.jsonl", text.encode())
    atomic_save_npz(path / "layers.npz", layer_arrays(h))
    summary = dict(summarize(h, cell, wall_s), files=manifest(path, extra_files), setting=run_setting())
    atomic_write_json(path / "summary.json", summary)
    return summary
