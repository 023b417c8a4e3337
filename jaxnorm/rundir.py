"""The run directory on disk: atomic writes, `sweep.json`, and what one finished cell writes.

```
<out>/sweep.json                    the resolved spec + format version + environment
<out>/cells/<cell_id>/config.json   {"cell": axes, "model", "optim", "train", "probe"}
<out>/cells/<cell_id>/metrics.jsonl one object per (logged step, seed)
<out>/cells/<cell_id>/layers.npz    History.layers / jacobian / eval arrays
<out>/cells/<cell_id>/summary.json  written last: its presence means the cell is done
<out>/results.csv                   one row per (cell, seed), rebuilt from every summary.json
```
Every file is written to a temporary name in its own directory, fsynced and `os.replace`d into place,
so a killed run never leaves a truncated file under a final name. JSON is strict: a non-finite number
is written as null (the `nonfinite_*` and `diverged` fields say what happened). A cell that is
(re)started first deletes the temporary files a killed run may have left in its directory.

Test hook: with the environment variable JAXNORM_TEST_WRITE_DELAY_S=<seconds> set, every atomic
write of a file inside a cell directory sleeps that long after writing its temporary file and before
renaming it into place, so a test can kill the process in the middle of writing a cell
(tests/test_reliability.py). Unset (the default) it costs one environment lookup per file.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnorm.config import ConfigError
from jaxnorm.history import History
from jaxnorm.sweep_spec import Cell, SweepSpec, spec_to_dict

FORMAT_VERSION = 1
FINAL_WINDOW = 10  # final/best train loss and accuracy are means over this many consecutive steps
METRIC_KEYS = ("loss", "accuracy", "grad_norm", "grad_norm_clipped", "clipped", "update_norm", "lr", "log_z")


# --- atomic files ---------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _test_write_delay(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    device = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "platform": device.platform,
            "device_kind": device.device_kind, "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "host": platform.node(), "argv": sys.argv,
            "git_commit": git_commit or None}


def check_out_dir(out_dir: Path) -> None:
    """ConfigError naming --out if `out_dir` cannot be a run directory: it, or the nearest existing
    folder above it, is not a directory (e.g. --out names an existing file)."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is" if p == out_dir else f"is inside {str(p)!r}, which is"
                raise ConfigError(f"--out: {str(out_dir)!r} {what} not a directory; "
                                  f"allowed: a new or existing run directory")
            return


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
        raise ConfigError(f"--out: run directory {str(out_dir)!r} holds a different sweep (see its sweep.json); "
                          f"allowed: the same spec to resume it, or a new --out directory")
    return True


def write_sweep_json(out_dir: Path, spec: SweepSpec, cell_ids: list[str]) -> None:
    atomic_write_json(Path(out_dir) / "sweep.json", {
        "format_version": FORMAT_VERSION, "spec": spec_to_dict(spec), "num_cells": len(cell_ids),
        "cell_ids": cell_ids, "environment": environment()})


# --- one cell -------------------------------------------------------------------------------------------

def cell_dir(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "cells" / cell_id


def is_done(out_dir: Path, cell_id: str) -> bool:
    return (cell_dir(out_dir, cell_id) / "summary.json").exists()


def write_config(path: Path, cell: Cell) -> None:
    """Create the cell's directory (removing temporary files a killed run left there) and its config.json."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
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


def _ratio(arr: np.ndarray | None, index: int, s: int) -> float | None:
    """‖first layer‖ / ‖last layer‖ of a [steps, S, L] array at one step; < 1 means the first layers
    get less gradient than the last (vanishing towards the input), > 1 the opposite."""
    if arr is None or arr.shape[0] == 0:
        return None
    row = arr[index, s]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(row[0] / row[-1])


def _window_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Means of every run of w consecutive values (len(x) − w + 1 of them)."""
    c = np.cumsum(np.concatenate([[0.0], x.astype(np.float64)]))
    return (c[w:] - c[:-w]) / w


def _layer_max(arr: np.ndarray | None, step: Any, s: int, reduce: Any = np.nanmax) -> float | None:
    """Max (or `reduce`) over everything but the logged-step and seed axes (layers, heads) at `step`;
    None when nothing there is finite (a diverged seed), rather than numpy's all-NaN warning."""
    if arr is None:
        return None
    with np.errstate(all="ignore"):
        v = np.asarray(arr[step])
        v = v[:, s] if isinstance(step, slice) else v[s]
        return float(reduce(v[np.isfinite(v)])) if np.isfinite(v).any() else None


def _last_layer(arr: np.ndarray | None, step: int, s: int) -> float | None:
    return None if arr is None else float(arr[step, s, -1])


def summarize_seed(h: History, s: int) -> dict[str, Any]:
    """The per-seed numbers of results.csv (see `summarize`)."""
    loss, acc = h.metrics["loss"][:, s], h.metrics["accuracy"][:, s]
    n = loss.shape[0]
    w = max(1, min(FINAL_WINDOW, n))
    div_step = int(h.diverged_step[s])
    before = loss[:div_step] if div_step >= 0 else loss
    smooth = _window_mean(before, min(w, len(before))) if len(before) else np.array([np.nan])
    with np.errstate(all="ignore"):
        best = np.nanmin(smooth) if np.isfinite(smooth).any() else np.nan
        gnorm = h.metrics["grad_norm"][:, s]
        max_gnorm = np.nanmax(gnorm) if not np.isnan(gnorm).all() else np.nan
    ev = h.eval_loss[:, s]
    jac = h.jacobian
    nonfinite = h.nonfinite[s] if s < len(h.nonfinite) else {}
    return {
        "seed": h.seeds[s],
        "initial_loss": loss[0],
        "final_loss": loss[-w:].mean(),
        "best_loss": best,
        "final_accuracy": acc[-w:].mean(),
        "final_eval_loss": ev[-1] if len(ev) else None,
        "best_eval_loss": (np.nanmin(ev) if np.isfinite(ev).any() else None) if len(ev) else None,
        "final_eval_accuracy": h.eval_accuracy[-1, s] if len(ev) else None,
        "diverged": bool(h.diverged[s]),
        "diverged_step": div_step if div_step >= 0 else None,
        "max_grad_norm": max_gnorm,
        "final_grad_norm": gnorm[-1],
        "final_log_z": h.metrics["log_z"][-1, s] if "log_z" in h.metrics else None,
        "grad_ratio_init": _ratio(h.layers.get("grad_norm/all"), 0, s),
        "grad_ratio_final": _ratio(h.layers.get("grad_norm/all"), -1, s),
        "act_grad_ratio_init": _ratio(h.layers.get("act_grad_norm"), 0, s),
        "act_grad_ratio_final": _ratio(h.layers.get("act_grad_norm"), -1, s),
        "jac_spectral_max": _layer_max(jac.get("jac_spectral"), 0, s),
        "jac_spectral_max_final": _layer_max(jac.get("jac_spectral"), -1, s),
        "jac_end_to_end_init": jac["jac_end_to_end"][0, s] if "jac_end_to_end" in jac else None,
        "jac_end_to_end_final": jac["jac_end_to_end"][-1, s] if "jac_end_to_end" in jac else None,
        "attn_entropy_min_final": _layer_max(h.layers.get("attn_entropy"), -1, s, reduce=np.min),
        "attn_logit_max_final": _layer_max(h.layers.get("attn_logit_max"), -1, s),
        "token_alignment_last_init": _last_layer(h.layers.get("token_alignment"), 0, s),
        "token_alignment_last_final": _last_layer(h.layers.get("token_alignment"), -1, s),
        "branch_ratio_max_init": _layer_max(h.layers.get("branch_ratio"), 0, s),
        "amplification_max": _layer_max(h.layers.get("amplification"), slice(None), s),
        "nonfinite_step": nonfinite.get("step"),
        "nonfinite_what": nonfinite.get("what"),
        "nonfinite_layer": nonfinite.get("layer"),
    }


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


def write_cell(path: Path, cell: Cell, h: History, wall_s: float) -> dict[str, Any]:
    """Write metrics.jsonl, layers.npz, then (last) summary.json; returns the summary."""
    rows = metrics_rows(h)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    atomic_write_bytes(path / "metrics.jsonl", text.encode())
    atomic_save_npz(path / "layers.npz", layer_arrays(h))
    summary = summarize(h, cell, wall_s)
    atomic_write_json(path / "summary.json", summary)
    return summary
