"""What counts as "trained": the one definition the stability map, the report and the console share.

A run **trained** if it did not diverge and its final train loss closed at least `GAP_FRACTION` of the
gap between the task's context-free loss and the best loss any cell of the same task reached in this sweep
(cell loss = mean over its seeds that did not diverge, `jaxnorm.aggregate`):

    final_loss <= baseline − GAP_FRACTION × (baseline − best)

where `baseline` is the context-free loss: the lowest a model that ignores its input can reach, the
entropy of the targets' distribution (`Dataset.context_free_loss`, recorded per run). On reverse/sort/copy
the targets are uniform, so it is the chance loss, ln of the alphabet; on lm and mlm it is the entropy of
the corpus's character frequencies, well below a uniform guess over its vocabulary (3.1 against 4.6 nats
on the built-in corpus), and a few steps of training reach it without using any context. Results written
before it was recorded fall back to the uniform guess. If even the best cell closed less than
`MIN_BEST_GAIN` of the baseline, nothing in the sweep learned the task and no run counts as trained
(otherwise "half of almost nothing" would pass). Relative to the best cell rather than to an absolute
number, the rule fits any task, width and step budget: a slow run that moved off the baseline but stayed
far from what the same task allows does not count, nor does one stuck at it.
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


def baseline_losses(df: pd.DataFrame) -> pd.Series:
    """Per row: the context-free loss its task's runs recorded (`context_free_loss`; one value per task, so a
    sweep resumed across versions reads the same for all its cells), else (results written before it was
    recorded) the uniform guess, `chance_losses`."""
    chance = chance_losses(df)
    if "context_free_loss" not in df:
        return chance
    recorded = pd.to_numeric(df["context_free_loss"], errors="coerce").astype(float)
    recorded = recorded.where(np.isfinite(recorded) & (recorded > 0))
    tasks = df["task"] if "task" in df else pd.Series("?", index=df.index)
    return recorded.groupby(tasks).transform("first").fillna(chance)


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
    baseline, best = baseline_losses(df), best_cell_loss(df)
    threshold = baseline - GAP_FRACTION * (baseline - best)
    learned = best <= (1 - MIN_BEST_GAIN) * baseline
    return threshold.where(learned)


def learned_anything(df: pd.DataFrame) -> bool:
    """Whether some cell of some task in `df` closed at least MIN_BEST_GAIN of its baseline (else no run can
    count as trained, and "trained" says nothing)."""
    return bool(len(df)) and bool(np.isfinite(trained_threshold(df)).any())


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
    return (f"trained = not diverged and final loss closed ≥ {GAP_FRACTION:.0%} of the gap from the "
            f"context-free loss (what ignoring the input reaches) to the best cell of the task")
