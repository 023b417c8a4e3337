"""Read a run directory into pandas. Works on partial runs: only finished cells (with summary.json) count.

>>> from jaxnorm import results
>>> df = results.load("runs/quick")                    # one row per (cell, seed)
>>> df.groupby(["block", "depth"]).final_loss.mean().unstack()
>>> layers = results.load_layers("runs/quick", df.cell_id[0])
>>> layers["grad_norm/all"].shape                      # [profiles, seeds, L]
>>> results.lr_sensitivity(df)                         # needs >= 2 learning rates per group
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxnorm import aggregate, outcome
from jaxnorm.columns import AXIS_COLUMNS, CONFIG_COLUMNS, GROUP_COLUMNS, TIMING_COLUMNS  # noqa: F401 (re-exported)


def _summaries(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished cell's summary.json, in the sweep's cell order (then by id for unknown cells)."""
    run_dir = Path(run_dir)
    order: dict[str, int] = {}
    sweep = run_dir / "sweep.json"
    if sweep.exists():
        order = {c: i for i, c in enumerate(json.loads(sweep.read_text()).get("cell_ids", []))}
    paths = sorted((run_dir / "cells").glob("*/summary.json"),
                   key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name))
    return [json.loads(p.read_text()) for p in paths]


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per seed: cell id, axes, a few config values, the seed's numbers and the cell's timing."""
    resolved = summary.get("resolved", {})
    base = {"cell_id": summary["cell_id"], **summary["cell"]}
    for part, names in CONFIG_COLUMNS.items():
        base.update({n: resolved.get(part, {}).get(n) for n in names})
    timing = {k: summary.get("timing", {}).get(k) for k in TIMING_COLUMNS}
    return [{**base, **seed, **timing} for seed in summary["per_seed"]]


def load(run_dir: str | Path) -> pd.DataFrame:
    """One row per (cell, seed) from every finished cell's summary.json (see rundir.summarize for columns).
    null/None (a non-finite number) reads as NaN."""
    rows = [r for s in _summaries(run_dir) for r in summary_rows(s)]
    columns = ["cell_id", *AXIS_COLUMNS, *[c for cs in CONFIG_COLUMNS.values() for c in cs], "seed"]
    df = pd.DataFrame(rows, columns=None if rows else columns)
    for col in df.columns:  # None -> NaN so numeric columns stay numeric
        if df[col].dtype == object and col not in ("cell_id", "block", "norm", "attention", "optimizer",
                                                   "clip", "task", "nonfinite_what"):
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
    "eval_steps", "eval_loss", "eval_accuracy" and "seeds"."""
    with np.load(Path(run_dir) / "cells" / cell_id / "layers.npz") as f:
        return {k: f[k] for k in f.files}


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Every finished cell's metrics.jsonl rows (step, seed, loss, ...) with cell_id and axis columns.
    The per-step learning rate (metrics.jsonl's "lr") is renamed `step_lr`: `lr` is the cell's peak lr."""
    frames = []
    for s in _summaries(run_dir):
        path = Path(run_dir) / "cells" / s["cell_id"] / "metrics.jsonl"
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        frame = pd.DataFrame(rows).rename(columns={"lr": "step_lr"})
        for k, v in reversed(list({"cell_id": s["cell_id"], **s["cell"]}.items())):
            frame.insert(0, k, v)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cell_id", *AXIS_COLUMNS, "step", "seed"])


def lr_sensitivity(df: pd.DataFrame, loss: str = "final_loss") -> pd.DataFrame:
    """LR sensitivity per (block, depth, optimizer, norm, attention, clip) group swept over >= 2 lrs.

    Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", §3.2:
    E_lr[min(L(lr), L_0) − min_lr' L(lr')], L_0 the loss at initialisation. Each (cell, seed) loss is
    capped at its own `initial_loss`; a diverged or non-finite run counts as L_0. L(lr) is the mean of
    the capped loss over seeds, and the min is taken over the capped curve too, so the result is >= 0:
    0 for a flat curve, up to ≈ L_0 − best when most learning rates fail. Also returns `best_lr`,
    `best_loss` and `num_lrs`.
    """
    keys = [c for c in GROUP_COLUMNS if c in df.columns]
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
