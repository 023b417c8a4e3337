"""The one rule that summarises a cell's seeds: every table, the report and every figure go through here.

- **Scale quantities** — norms, ratios of norms, Jacobian norms (`GEOMETRIC`, and per-layer profiles drawn
  on a log axis) — are **geometric means** over seeds, exp(mean log x). The geometric mean of per-seed
  ratios equals the ratio of the geometric means of numerator and denominator, so "mean of ratios" and
  "ratio of means" agree, and seeds that differ by a factor of ten weigh the same above and below.
- **Everything else** — losses, accuracies, entropies, cosines, and the `*_decades_*` slopes (already
  log10 units: their mean is the slope of the geometric-mean profile) — is an **arithmetic mean**.
- **End-of-training quantities leave out diverged seeds** (a diverged run's parameters are frozen where its
  loss blew up; its final numbers describe the blow-up, which `diverged`, `diverged_step` and
  `nonfinite_*` record). Quantities at initialisation use every seed. Non-finite values are left out
  everywhere, and so are values <= 0 from a geometric mean.
- **Spread**: min–max over the seeds used; with `BOOTSTRAP_MIN_SEEDS` or more seeds, a 95% percentile
  bootstrap interval of the aggregate instead (fixed resampling seed, so tables are reproducible).

>>> from jaxnorm import aggregate, results
>>> cells = aggregate.cell_table(results.load("runs/quick"))   # one row per cell: x, x_lo, x_hi per column
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from jaxnorm.columns import TIMING_COLUMNS, axis_columns, identity_columns

BOOTSTRAP_MIN_SEEDS = 5
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

# Per-seed columns of results.csv aggregated geometrically (see the module docstring); the `*_decades_*`
# columns and everything else numeric are arithmetic means.
GEOMETRIC = ("max_grad_norm", "final_grad_norm", "grad_ratio_init", "grad_ratio_final", "act_grad_ratio_init",
             "act_grad_ratio_final", "jac_spectral_max", "jac_spectral_max_final", "jac_end_to_end_init",
             "jac_end_to_end_final", "branch_ratio_max_init", "amplification_max")
# Per-seed columns that are not aggregated as numbers: identity, the divergence record, timing (per cell).
NOT_AGGREGATED = ("seed", "diverged", "diverged_step", "nonfinite_step", "nonfinite_what", "nonfinite_layer",
                  *TIMING_COLUMNS)


class Aggregate(NamedTuple):
    value: float  # the aggregate (NaN when no seed has a usable value)
    lo: float     # lower end of the spread
    hi: float     # upper end of the spread
    n: int        # seeds used


def is_geometric(column: str) -> bool:
    return column in GEOMETRIC


def is_end_of_training(column: str) -> bool:
    """Columns that describe the run after training, from which diverged seeds are left out."""
    return ("final" in column or column.startswith("best_") or column in ("max_grad_norm", "amplification_max")) \
        and column not in NOT_AGGREGATED


def _center(x: np.ndarray, geometric: bool) -> np.ndarray:
    return np.exp(np.mean(np.log(x), axis=-1)) if geometric else np.mean(x, axis=-1)


def usable(values, geometric: bool) -> np.ndarray:
    """The finite values (and > 0 for a geometric mean) as float64."""
    x = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(x) & ((x > 0) if geometric else True)
    return x[keep]


def seed_aggregate(values, geometric: bool) -> Aggregate:
    """The aggregate of one quantity's per-seed values, with its spread (see the module docstring)."""
    x = usable(values, geometric)
    if x.size == 0:
        return Aggregate(float("nan"), float("nan"), float("nan"), 0)
    value = float(_center(x, geometric))
    if x.size >= BOOTSTRAP_MIN_SEEDS:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        draws = _center(x[rng.integers(0, x.size, (BOOTSTRAP_RESAMPLES, x.size))], geometric)
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return Aggregate(value, float(lo), float(hi), int(x.size))
    return Aggregate(value, float(x.min()), float(x.max()), int(x.size))


def column_aggregate(rows: pd.DataFrame, column: str) -> Aggregate:
    """`seed_aggregate` of one results column over the (cell's) seed rows, by the column's rule."""
    values = rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
    if is_end_of_training(column) and "diverged" in rows:
        values = values[~rows["diverged"].astype(bool).to_numpy()]
    return seed_aggregate(values, is_geometric(column))


def profile(y_SxN, geometric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aggregate, lo, hi) along axis 0 (seeds) for each of N points (layers, steps, depths): the same
    rule as `seed_aggregate`, point by point. NaN where no seed has a usable value."""
    y = np.atleast_2d(np.asarray(y_SxN, dtype=np.float64))
    out = np.full((3, y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        a = seed_aggregate(y[:, j], geometric)
        out[:, j] = a.value, a.lo, a.hi
    return out[0], out[1], out[2]


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """The per-seed result columns that get aggregated (numbers, not identity or timing)."""
    skip = set(NOT_AGGREGATED) | set(identity_columns())
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


def cell_table(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per cell, in the sweep's order: cell_id, the axes and config columns, `seeds`, `diverged`
    (count of diverged seeds), and for each numeric column c its aggregate c with c_lo, c_hi (spread)."""
    if df.empty:
        return pd.DataFrame(columns=["cell_id", *axis_columns(), "seeds", "diverged"])
    columns = numeric_columns(df) if columns is None else columns
    ident = [c for c in identity_columns() if c in df]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _, g in df.groupby("cell_id", sort=False):
            row = {c: g[c].iloc[0] for c in ident}
            row["seeds"] = len(g)
            row["diverged"] = int(g["diverged"].astype(bool).sum()) if "diverged" in g else 0
            for c in columns:
                a = column_aggregate(g, c)
                row[c], row[f"{c}_lo"], row[f"{c}_hi"] = a.value, a.lo, a.hi
            rows.append(row)
    return pd.DataFrame(rows)
