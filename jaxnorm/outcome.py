"""What counts as "trained": the one definition the stability map, the report and the console share.

A run **trained** if it did not diverge and its final train loss closed at least `GAP_FRACTION` of the
gap between the task's chance loss and the best loss any cell of the same task reached in this sweep
(cell loss = mean over its seeds that did not diverge, `jaxnorm.aggregate`):

    final_loss <= chance − GAP_FRACTION × (chance − best)

where `chance` is the loss of guessing uniformly among the symbols a target can be (ln of the alphabet
for reverse/sort/copy, ln of the corpus vocabulary for lm and mlm). If even the best cell closed less than
`MIN_BEST_GAIN` of the chance loss, nothing in the sweep learned the task and no run counts as trained
(otherwise "half of almost nothing" would pass). Relative to the best cell rather than to an absolute
number, the rule fits any task, width and step budget: a slow run that moved off chance but stayed far
from what the same task allows does not count, nor does one stuck at chance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GAP_FRACTION = 0.5
MIN_BEST_GAIN = 0.1
SYNTHETIC_TASKS = ("reverse", "sort", "copy")


def chance_loss(task: str, vocab_size: float | None, num_symbols: float | None) -> float:
    """ln(number of values a target can take): the loss of a uniform guess. NaN if unknown."""
    if task in SYNTHETIC_TASKS:
        n = num_symbols
    elif task == "mlm":
        n = None if vocab_size is None else vocab_size - 1  # the MASK id is never a target
    else:
        n = vocab_size
    try:
        return math.log(float(n)) if n is not None and float(n) >= 1 else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def chance_losses(df: pd.DataFrame) -> pd.Series:
    """`chance_loss` of every row (needs the `task`, `vocab_size` and `num_symbols` columns)."""
    get = lambda c: df[c] if c in df else pd.Series([None] * len(df), index=df.index)  # noqa: E731
    return pd.Series([chance_loss(t, v, n) for t, v, n in zip(get("task"), get("vocab_size"), get("num_symbols"))],
                     index=df.index, dtype=float)


def best_cell_loss(df: pd.DataFrame) -> pd.Series:
    """Per row: the lowest cell-mean final loss (seeds that did not diverge) among the cells of its task."""
    ok = df[~df["diverged"].astype(bool)]
    per_cell = ok.groupby("cell_id", sort=False)["final_loss"].mean()
    task_of = df.groupby("cell_id", sort=False)["task"].first() if "task" in df else pd.Series("?", per_cell.index)
    best = per_cell.groupby(task_of.reindex(per_cell.index)).min()
    tasks = df["task"] if "task" in df else pd.Series("?", index=df.index)
    return tasks.map(best).astype(float)


def trained_threshold(df: pd.DataFrame) -> pd.Series:
    """Per row: the final loss a run must reach to count as trained (NaN: nothing of its task learned)."""
    chance, best = chance_losses(df), best_cell_loss(df)
    threshold = chance - GAP_FRACTION * (chance - best)
    learned = best <= (1 - MIN_BEST_GAIN) * chance
    return threshold.where(learned)


def trained(df: pd.DataFrame) -> pd.Series:
    """Per (cell, seed) row: True if the run trained (see the module docstring)."""
    if df.empty:
        return pd.Series([], dtype=bool)
    loss = df["final_loss"].astype(float)
    threshold = trained_threshold(df)
    return (~df["diverged"].astype(bool) & np.isfinite(loss) & (loss <= threshold)).fillna(False).astype(bool)


def has_training(df: pd.DataFrame) -> bool:
    return not df.empty and "steps" in df and bool((df["steps"].fillna(0) > 0).any())


def describe() -> str:
    """The rule in one sentence, for captions and the report."""
    return (f"trained = not diverged and final loss closed ≥ {GAP_FRACTION:.0%} of the gap from chance "
            f"to the best cell of the task")
