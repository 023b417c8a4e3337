"""Read a run directory into pandas. Works on partial runs: only finished cells (with summary.json) count,
and only the cells sweep.json lists; a damaged cell is skipped with a warning naming it (jaxnorm.integrity).

>>> from jaxnorm import results
>>> df = results.load("runs/quick")                    # one row per (cell, seed)
>>> df.groupby(["block", "depth"]).final_loss.mean().unstack()
>>> layers = results.load_layers("runs/quick", df.cell_id[0])
>>> layers["grad_norm/all"].shape                      # [profiles, seeds, L]
>>> results.lr_sensitivity(df)                         # needs >= 2 learning rates per group
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxnorm import aggregate, integrity, outcome
from jaxnorm.columns import (CONFIG_COLUMNS, TIMING_COLUMNS, axis_columns, group_columns, identity_columns,
                             text_columns)


class NotARunDir(ValueError):
    """The path is not a jaxnorm run directory (or its sweep.json is unreadable); the message is one line."""


class RunDirWarning(UserWarning):
    """A cell left out of the results: not in sweep.json, or its files are damaged (one line naming them)."""


def check_run_dir(run_dir: str | Path, *, need_sweep_json: bool = False) -> Path:
    """`run_dir` as a Path if it looks like a run directory (sweep.json or cells/), else NotARunDir."""
    run_dir = Path(run_dir)
    has_sweep, has_cells = (run_dir / "sweep.json").is_file(), (run_dir / "cells").is_dir()
    if not ((has_sweep and has_cells) if need_sweep_json else (has_sweep or has_cells)):
        what = "does not exist" if not run_dir.exists() else "has no sweep.json and cells/"
        raise NotARunDir(f"{str(run_dir)!r}: not a run directory ({what}); "
                         f"allowed: a directory written by jaxnorm.sweep.run")
    return run_dir


def warn(message: str) -> None:
    warnings.warn(message, RunDirWarning, stacklevel=3)


def listed_cells(run_dir: Path) -> list[str] | None:
    """sweep.json's cell ids (each checked to be a cell id), or None without a sweep.json. A sweep.json that
    cannot be read is an error: without it no cell can be told to belong to the sweep."""
    path = Path(run_dir) / "sweep.json"
    if not path.is_file():
        return None
    try:
        ids = json.loads(path.read_bytes())["cell_ids"]
        assert isinstance(ids, list) and all(integrity.is_valid_cell_id(c) for c in ids)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise NotARunDir(f"{str(path)!r}: unreadable or not a sweep.json (no valid cell_ids); allowed: the "
                         "sweep.json jaxnorm.sweep.run wrote (rerun the sweep's command in a new --out)") from None
    return ids


def sweep_cell_ids(run_dir: Path) -> list[str]:
    """The cells results are read from: sweep.json's, in its order. Cell directories it does not list (a
    stray copy from another sweep) are named in one warning; without sweep.json every well-named cell
    directory counts, with a warning."""
    cells = Path(run_dir) / "cells"
    present = sorted(p.name for p in cells.iterdir() if p.is_dir()) if cells.is_dir() else []
    listed = listed_cells(run_dir)
    if listed is None:
        warn(f"{str(run_dir)!r} has no sweep.json: reading every cell directory in it")
        listed = [c for c in present if integrity.is_valid_cell_id(c)]
    extra = sorted(set(present) - set(listed))
    if extra:
        warn(f"{str(run_dir)!r}: ignoring {len(extra)} cell director{'y' if len(extra) == 1 else 'ies'} not in "
             f"its sweep: {', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}")
    return listed


def _summaries(run_dir: str | Path) -> list[dict[str, Any]]:
    """The summary.json of every finished cell of the sweep, in the sweep's cell order. A damaged cell
    (summary unreadable or another cell's, a file missing or of the wrong size) is skipped with a warning."""
    run_dir = check_run_dir(run_dir)
    summaries = []
    for cell_id in sweep_cell_ids(run_dir):
        path = run_dir / "cells" / cell_id
        if not (path / "summary.json").exists():
            continue
        try:
            summaries.append(integrity.check_sizes(path))
        except integrity.DamagedCell as e:
            warn(f"skipping {e}")
    return summaries


def cell_settings(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """cell_id -> the setting it ran under (rundir.run_setting; {} for cells written before it was recorded)."""
    return {s["cell_id"]: s.get("setting") or {} for s in _summaries(run_dir)}


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per seed: cell id, axes, a few config values, the seed's numbers and the cell's timing."""
    resolved = summary.get("resolved", {})
    base = {"cell_id": summary["cell_id"], **summary["cell"]}
    for part, names in CONFIG_COLUMNS.items():
        base.update({n: resolved.get(part, {}).get(n) for n in names})
    timing = {k: summary.get("timing", {}).get(k) for k in TIMING_COLUMNS}
    return [{**base, **seed, **timing} for seed in summary["per_seed"]]


def load(run_dir: str | Path) -> pd.DataFrame:
    """One row per (cell, seed) from the summary.json of every finished cell sweep.json lists (see
    rundir.summarize for columns). null/None (a non-finite number) reads as NaN. NotARunDir if `run_dir` is
    not a run directory; a damaged or foreign cell is left out with a RunDirWarning naming it."""
    rows = [r for s in _summaries(run_dir) for r in summary_rows(s)]
    df = pd.DataFrame(rows, columns=None if rows else [*identity_columns(), "seed"])
    text = text_columns()
    for col in df.columns:  # None -> NaN so numeric columns stay numeric
        if df[col].dtype == object and col not in text:
            df[col] = _numeric(df[col])
    return df


def _numeric(col: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(col)
    except (TypeError, ValueError):
        return col


def load_layers(run_dir: str | Path, cell_id: str) -> dict[str, np.ndarray]:
    """A cell's layers.npz as a dict: per-layer arrays [profiles, S, L, ...] keyed as in History
    ("grad_norm/all", "act_grad_norm", "jac_spectral", ...), plus "layer_steps", "jacobian_steps",
    "eval_steps", "eval_loss", "eval_accuracy" and "seeds". integrity.DamagedCell (one line naming the
    cell and the file) if the cell is unfinished or its layers.npz is missing, truncated or corrupt."""
    path = check_run_dir(run_dir) / "cells" / integrity.check_cell_id(cell_id)
    summary = integrity.read_summary(path)
    data = integrity.read_checked(path, summary, "layers.npz")
    try:
        with np.load(io.BytesIO(data)) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        raise integrity.DamagedCell(cell_id, "layers.npz", "is not a readable npz file") from None


def _metrics_rows(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    data = integrity.read_checked(run_dir / "cells" / summary["cell_id"], summary, "metrics.jsonl")
    try:
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except ValueError:
        raise integrity.DamagedCell(summary["cell_id"], "metrics.jsonl", "is not JSON lines") from None


def load_cell_metrics(run_dir: str | Path, cell_id: str) -> list[dict[str, Any]]:
    """One finished cell's metrics.jsonl rows as dicts (step, seed, loss, ...; null for a non-finite number).
    integrity.DamagedCell (one line) if the cell is unfinished or the file is missing or corrupt."""
    path = check_run_dir(run_dir) / "cells" / integrity.check_cell_id(cell_id)
    return _metrics_rows(Path(run_dir), integrity.read_summary(path))


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Every finished cell's metrics.jsonl rows (step, seed, loss, ...) with cell_id and axis columns (a cell
    whose metrics.jsonl is damaged is skipped with a warning).
    The per-step learning rate (metrics.jsonl's "lr") is renamed `step_lr`: `lr` is the cell's peak lr."""
    frames = []
    for s in _summaries(run_dir):
        try:
            rows = _metrics_rows(Path(run_dir), s)
        except integrity.DamagedCell as e:
            warn(f"skipping {e}")
            continue
        frame = pd.DataFrame(rows).rename(columns={"lr": "step_lr"})
        for k, v in reversed(list({"cell_id": s["cell_id"], **s["cell"]}.items())):
            frame.insert(0, k, v)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["cell_id", *axis_columns(), "step", "seed"])
    return pd.concat(frames, ignore_index=True)


def lr_sensitivity(df: pd.DataFrame, loss: str = "final_loss") -> pd.DataFrame:
    """LR sensitivity per group of every other axis (`columns.group_columns`: block, depth, optimizer, norm,
    attention, clip) swept over >= 2 lrs.

    Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", §3.2:
    E_lr[min(L(lr), L_0) − min_lr' L(lr')], L_0 the loss at initialisation. Each (cell, seed) loss is
    capped at its own `initial_loss`; a diverged or non-finite run counts as L_0. L(lr) is the mean of
    the capped loss over seeds, and the min is taken over the capped curve too, so the result is >= 0:
    0 for a flat curve, up to ≈ L_0 − best when most learning rates fail. Also returns `best_lr`,
    `best_loss` and `num_lrs`.
    """
    keys = [c for c in group_columns() if c in df.columns]
    out_cols = [*keys, "num_lrs", "lr_sensitivity", "best_lr", "best_loss"]
    if df.empty:
        return pd.DataFrame(columns=out_cols)
    l0 = df["initial_loss"].astype(float)
    value = df[loss].astype(float)
    bad = df["diverged"].astype(bool) | ~np.isfinite(value)
    capped = np.where(bad, l0, np.minimum(value, l0))
    curve = df.assign(_capped=capped).groupby([*keys, "lr"], dropna=False)["_capped"].mean().reset_index()
    rows = []
    for group, g in curve.groupby(keys, dropna=False):
        if len(g) < 2:
            continue
        group = group if isinstance(group, tuple) else (group,)
        best = g["_capped"].idxmin()
        rows.append({**dict(zip(keys, group)), "num_lrs": len(g),
                     "lr_sensitivity": float(g["_capped"].mean() - g["_capped"].min()),
                     "best_lr": float(g.loc[best, "lr"]), "best_loss": float(g.loc[best, "_capped"])})
    return pd.DataFrame(rows, columns=out_cols)


def summary_table(df: pd.DataFrame) -> str:
    """The console's table: one line per cell (its id spells its axes), aggregated over seeds by the one rule
    of `jaxnorm.aggregate` (the report's table shows the same numbers with their spread).

    After training: mean final loss and accuracy (seeds that did not diverge), diverged and trained seeds
    (`jaxnorm.outcome`), and the gradient growth from input to output in decades at initialisation and at
    the end (`grad_decades_*`, all parameters). Initialisation only (steps = 0): the gradient and residual-
    stream growth in decades, the first/last-layer gradient ratio and the end-to-end Jacobian norm."""
    if df.empty:
        return "(no finished cells)"
    cells = aggregate.cell_table(df).set_index("cell_id")
    table = pd.DataFrame(index=cells.index)
    if outcome.has_training(df):
        ok = df.assign(_trained=outcome.trained(df)).groupby("cell_id", sort=False)["_trained"].sum()
        table["final_loss"] = cells["final_loss"]
        table["accuracy"] = cells["final_accuracy"]
        table["diverged"] = cells["diverged"].astype(str) + "/" + cells["seeds"].astype(str)
        table["trained"] = ok.reindex(cells.index).astype(int).astype(str) + "/" + cells["seeds"].astype(str)
        columns = {"grad_decades_init": "grad_decades_init", "grad_decades_final": "grad_decades_final",
                   "grad_ratio_final": "grad_ratio_final"}
    else:
        columns = {"grad_decades_init": "grad_decades", "act_grad_decades_init": "act_grad_decades",
                   "grad_ratio_init": "grad_ratio", "jac_end_to_end_init": "jac_end_to_end"}
    for col, name in columns.items():
        if col in cells:
            table[name] = cells[col]
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.float_format", "{:.4g}".format):
        return table.to_string()
