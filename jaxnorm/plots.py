"""What the figures share (`jaxnorm.figures.draw_all(run_dir)` writes every PNG whose data the run has).

>>> from jaxnorm import plots, plots_layers, results
>>> df = results.load("runs/quick")                   # draw one figure inline in a notebook:
>>> fig = plots_layers.grad_profile(df, plots.LayerStore("runs/quick"))

The figure functions live in `plots_layers` (per-layer profiles, spectra) and `plots_training` (losses,
stability, learning rates); each takes data (a results DataFrame, a mapping cell_id -> layers.npz arrays,
a metrics DataFrame) and returns a matplotlib `Figure`, or None when the data it needs is absent.
This module holds what they share: the Agg backend, lines of the seeds' aggregate with spread bands (`jaxnorm.aggregate`), the
choice of which cells a figure shows, and saving. Legends use the registry names (block, optimizer, ...).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window (works headless, in CI and on TPU hosts)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd

from matplotlib.figure import Figure  # noqa: E402

from jaxnorm import aggregate, integrity, outcome, results, rundir  # noqa: E402
from jaxnorm.axes import AXES  # noqa: E402 (the grid axes; `axes` names matplotlib's subplots here)
from jaxnorm.config import NORM_FREE_BLOCKS  # noqa: E402

DPI = 110
PANEL_W, PANEL_H = 4.2, 3.2


NotARunDir = results.NotARunDir


def check_run_dir(run_dir: str | Path) -> Path:
    """NotARunDir unless `run_dir` has sweep.json and cells/ (and sweep.json is readable)."""
    run_dir = results.check_run_dir(run_dir, need_sweep_json=True)
    results.listed_cells(run_dir)
    return run_dir


class LayerStore(Mapping):
    """cell_id -> that cell's layers.npz arrays, read on first use (a paper sweep has thousands)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def __getitem__(self, cell_id: str) -> dict[str, np.ndarray]:
        if cell_id not in self._cache:
            try:
                self._cache[cell_id] = results.load_layers(self.run_dir, cell_id)
            except integrity.DamagedCell as e:  # the figures leave the cell out, and say so
                results.warn(f"skipping {e} in the per-layer figures")
                raise KeyError(cell_id) from None
        return self._cache[cell_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.parent.name for p in (self.run_dir / "cells").glob("*/layers.npz")))

    def __len__(self) -> int:
        return sum(1 for _ in self)


# --- which cells a figure shows ---------------------------------------------------------------------------

def cells_of(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (the first seed's row), in the sweep's order."""
    return df.drop_duplicates("cell_id").reset_index(drop=True)


def values(df: pd.DataFrame, col: str) -> list:
    """The distinct values of a column in order of first appearance (= the sweep's axis order), numeric axes
    (depth, lr) sorted."""
    vals = list(dict.fromkeys(df[col].tolist()))
    return sorted(vals) if col in AXES and AXES[col].kind != "name" else vals


def varying(df: pd.DataFrame, cols: Sequence[str] | None = None) -> list[str]:
    """The columns of `cols` (default: every grid axis) that take more than one value in `df`."""
    cols = results.axis_columns() if cols is None else cols
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def fix_others(df: pd.DataFrame, keep: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """Rows whose axes outside `keep` equal their first value in the sweep; and a caption naming those values.

    A figure with panels by block and lines by depth cannot also show every optimizer and learning
    rate; it shows the first of each (the caption says which), so nothing is averaged silently.
    Norm-free blocks (rezero, no_norm; recorded with norm "none") are kept whatever norm the other blocks
    are fixed to, and the caption says they have none: "norm=layernorm (none for rezero)"; when no block
    with a norm is shown, the caption makes no norm claim."""
    fixed, notes = {}, {}
    for col in varying(df):
        if col not in keep:
            if col == "norm" and "block" in df.columns:
                # Norm-free blocks are recorded with norm "none": keep them whatever norm the other blocks
                # are shown with, or their panels would vanish.
                free = df["block"].isin(NORM_FREE_BLOCKS)
                if not (~free).any():
                    continue  # only norm-free blocks: nothing to fix, no norm to name
                value = df.loc[~free, col].iloc[0]
                df = df[(df[col] == value) | free]
                fixed[col] = value
                shown_free = list(dict.fromkeys(df.loc[df["block"].isin(NORM_FREE_BLOCKS), "block"]))
                if shown_free:
                    notes[col] = f" (none for {', '.join(shown_free)})"
                continue
            fixed[col] = df[col].iloc[0]
            df = df[df[col] == fixed[col]]
    return df, ", ".join((f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}") + notes.get(k, "")
                         for k, v in fixed.items())


def best_setting_cells(table: pd.DataFrame, panel: str = "block") -> pd.DataFrame:
    """The rows of `table` (`aggregate.cell_table`: one per cell, with the seeds' mean `final_loss`) at one
    setting of the axes other than `panel` and depth per value of `panel`: the setting of its cell with the
    lowest mean final loss at its deepest depth (a NaN loss, every seed diverged, counts last; ties: the
    first in the sweep). So each placement is shown, and quoted, at its best setting, the same at every depth."""
    others = [c for c in varying(table) if c not in (panel, "depth")]
    kept = []
    for _, sub in table.groupby(panel, sort=False):
        deep = sub[sub["depth"] == sub["depth"].max()]
        best = deep.assign(_key=deep["final_loss"].astype(float).fillna(np.inf)).sort_values("_key", kind="stable")
        same = np.ones(len(sub), bool)
        for c in others:
            same &= (sub[c] == best[c].iloc[0]).to_numpy()
        kept.append(sub[same])
    return pd.concat(kept) if kept else table


def shown_cells(df: pd.DataFrame, panel: str = "block") -> tuple[pd.DataFrame, str, dict]:
    """The cells a per-layer figure draws (`cells_of` rows, one per `panel` value and depth), the caption
    saying which, and per `panel` value the label of its setting for its panel titles ({} when the caption
    names it).

    After training that learned the task (`outcome.learned_anything`) with other axes varying, each panel
    value is drawn at its best setting (`best_setting_cells`): the cells the report's findings quote. Else
    (initialisation, a single setting, or nothing learned, when the lowest loss would be picked by noise)
    `fix_others`: the first value of every other axis."""
    cells = cells_of(df)
    others = [c for c in varying(cells) if c not in (panel, "depth")]
    if not (others and outcome.has_training(df) and outcome.learned_anything(df)):
        shown, caption = fix_others(cells, keep=(panel, "depth"))
        return shown, caption, {}
    best = best_setting_cells(aggregate.cell_table(df, ["final_loss"]), panel)
    shown = cells[cells["cell_id"].isin(best["cell_id"])]
    labels = {p: ", ".join(AXES[c].legend(sub[c].iloc[0]) for c in others)
              for p, sub in shown.groupby(panel, sort=False)}
    return shown, f"each {panel} at the setting of its lowest final loss at its deepest depth", labels


def label_of(row: Any, cols: Sequence[str]) -> str:
    parts = []
    for c in cols:
        v = row[c] if isinstance(row, (dict, pd.Series)) else getattr(row, c)
        parts.append(AXES[c].legend(v) if c in AXES else str(v))
    return " ".join(parts)


# --- drawing ------------------------------------------------------------------------------------------------

def grid(nrows: int, ncols: int, *, sharey: bool | str = False, w: float = PANEL_W,
         h: float = PANEL_H) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, sharey=sharey,
                             layout="constrained")
    return fig, axes


def colors(n: int, cmap: str = "viridis") -> list:
    """n distinguishable colours: along a sequential colormap for ordered quantities (depth, learning rate),
    or the first n of a qualitative one ("tab10", "tab20") for categories."""
    cm = plt.get_cmap(cmap)
    if cmap.startswith("tab"):
        return [cm(i % cm.N) for i in range(n)]
    return [cm(0.85 * i / max(n - 1, 1)) for i in range(n)]


def mean_band(ax, x: np.ndarray, y_SxN: np.ndarray, *, label: str | None = None, color=None,
              log: bool = False, **line_kw) -> None:
    """The seeds' aggregate (axis 0) as a line and their spread as a band, by the one rule of
    `jaxnorm.aggregate`: on a log axis (norms) the geometric mean, else the mean; non-finite values (a
    diverged seed) are left out, and on a log axis so are values <= 0."""
    center, lo, hi = aggregate.profile(y_SxN, geometric=log)
    (line,) = ax.plot(x, center, label=label, color=color, **line_kw)
    if np.atleast_2d(np.asarray(y_SxN)).shape[0] > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)


def legend(ax, n: int | None = None, **kw) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        n = n or len(handles)
        ax.legend(fontsize="small" if n <= 8 else "x-small", ncol=1 if n <= 10 else 2, framealpha=0.7, **kw)


def outside_legend(fig: Figure, ax, **kw) -> None:
    """`ax`'s legend entries in one legend below the figure's panels, where it covers neither data nor title."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncol = max(1, min(len(handles), int(fig.get_figwidth() // 2.2)))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small", framealpha=0.7, **kw)


def suptitle(fig: Figure, title: str, caption: str = "") -> None:
    """Title (and a caption in parentheses), wrapped to the figure's width so narrow figures keep it whole."""
    width = max(30, int(fig.get_figwidth() * 11))
    text = textwrap.fill(title, width) + (f"\n{textwrap.fill(f'({caption})', width)}" if caption else "")
    fig.suptitle(text, fontsize="medium")


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def save_atomic(fig: Figure, path: Path) -> Path:
    """`save` through `rundir.atomic_write_bytes`: a unique temporary name per process, renamed into place,
    with the umask's permissions; a killed or failing draw leaves no partial PNG under the final name."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    rundir.atomic_write_bytes(path, buf.getvalue())
    return path
