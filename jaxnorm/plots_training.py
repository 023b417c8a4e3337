"""Training figures: final loss vs depth, stability map, loss curves, LR sensitivity, logit growth.

Each takes `df` (`results.load`: one row per cell and seed) and, where it needs per-step data, `metrics`
(`results.load_metrics`) or `layers` (cell_id -> layers.npz arrays); each returns a Figure, or None when
the run has no such data (no training, a single depth, a single learning rate).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from jaxnorm import aggregate, outcome, results
from jaxnorm.axes import AXES, with_figure
from jaxnorm.outcome import has_training, trained
from jaxnorm.plots import (PANEL_H, cells_of, colors, fix_others, grid, label_of, legend, mean_band, outside_legend, suptitle,
                           values, varying)

LINESTYLES = ("-", "--", ":", "-.")
CHANCE_STYLE = dict(color="grey", linestyle=":", linewidth=1.2)
FREQUENCY_STYLE = dict(color="grey", linestyle="-.", linewidth=1.0)


def chance_line(ax, df: pd.DataFrame) -> None:
    """A horizontal line at the task's chance loss (`jaxnorm.outcome.chance_loss`), labelled once, and on a
    text task another at its context-free loss (the character frequencies' entropy, `outcome.baseline_losses`)."""
    chance = outcome.chance_losses(df).dropna().unique() if len(df) else []
    for i, c in enumerate(sorted(chance)):
        ax.axhline(c, label="chance (uniform guess)" if i == 0 else None, **CHANCE_STYLE)
    baseline = outcome.baseline_losses(df).dropna().unique() if len(df) else []
    for i, b in enumerate(sorted(b for b in baseline if not np.isclose(chance, b).any())):
        ax.axhline(b, label="character frequencies (no context)" if i == 0 else None, **FREQUENCY_STYLE)


def capped_loss(df: pd.DataFrame, loss: str = "final_loss") -> pd.Series:
    """The loss LR sensitivity uses: capped at the initial loss; a diverged or non-finite run = initial loss."""
    value, l0 = df[loss].astype(float), df["initial_loss"].astype(float)
    bad = df["diverged"].astype(bool) | ~np.isfinite(value)
    return pd.Series(np.where(bad, l0, np.minimum(value, l0)), index=df.index)


def row_axes(df: pd.DataFrame, exclude: tuple[str, ...], cols: list[str] | None = None) -> list[str]:
    """The axes that vary in `df` (of `cols`, default every axis) but `exclude`: one figure row per combination
    of them. A norm that varies only through the norm-free blocks (norm "none") is not a row of its own."""
    rows = [c for c in varying(df, cols) if c not in exclude]
    if "norm" in rows and df.loc[df["norm"] != "none", "norm"].nunique() <= 1:
        rows.remove("norm")
    return rows


def _panels(df: pd.DataFrame, cols: tuple[str, ...]) -> list[tuple]:
    """Combinations of `cols` (only those that vary) present in df, in order; [()] if none vary."""
    cols = tuple(c for c in cols if c in varying(df))
    return [()] if not cols else list(dict.fromkeys(map(tuple, df[list(cols)].itertuples(index=False))))


def _select(df: pd.DataFrame, cols: tuple[str, ...], key: tuple) -> pd.DataFrame:
    cols = tuple(c for c in cols if c in varying(df))
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(cols, key):
        mask &= (df[c] == v).to_numpy()
    return df[mask]


def _panel_title(df: pd.DataFrame, cols: tuple[str, ...], key: tuple) -> str:
    names = [c for c in cols if c in varying(df)]
    if not names:  # one panel: name the fixed values instead
        return " ".join(f"{c}={df[c].iloc[0]}" for c in cols if c in df)
    return " ".join(f"{c}={v}" for c, v in zip(names, key))


def pooled_nouns() -> list[str]:
    """What the stability map pools besides seeds, in words: the axes other than its x axis, its panels and
    block (its rows); those loss vs depth picks the best of (learning rates) first."""
    pooled = [a for a in AXES.values() if a.figure in ("line", "best") and a.name != "block"]
    return [a.noun for a in sorted(pooled, key=lambda a: a.figure != "best")]


def loss_vs_depth(df: pd.DataFrame) -> Figure | None:
    """Final train loss vs depth, one panel per optimizer × clip, one line per block (× norm × attention): the
    axes whose figure role (jaxnorm.axes) is "panel" and "line".

    With several learning rates each point uses the best one (lowest mean capped loss). The line is the
    mean over seeds that did not diverge (band = their spread, `jaxnorm.aggregate`); each diverged seed is an × at its initial loss."""
    if not has_training(df) or df["depth"].nunique() < 2:
        return None
    df = df.assign(_capped=capped_loss(df))
    panel_cols, line_cols = tuple(with_figure("panel")), tuple(with_figure("line"))
    label_cols = [c for c in line_cols if c in varying(df)] or ["block"]
    panels = _panels(df, panel_cols)
    lines = list(dict.fromkeys(map(tuple, df[label_cols].itertuples(index=False))))
    color = dict(zip(lines, colors(len(lines), "tab10" if len(lines) <= 10 else "tab20")))
    fig, axes = grid(1, len(panels), sharey=True, h=PANEL_H + 1.2)  # room for the legend below
    for ax, pkey in zip(axes[0], panels):
        sub = _select(df, panel_cols, pkey)
        for line in lines:
            pts = sub[(sub[label_cols] == pd.Series(line, index=label_cols)).all(axis=1)]
            if pts.empty:
                continue
            best = pts.groupby(["depth", "lr"])["_capped"].mean().reset_index()
            best = best.loc[best.groupby("depth")["_capped"].idxmin()]
            rows = pts.merge(best[["depth", "lr"]], on=["depth", "lr"])
            depths = values(rows, "depth")
            for col, style in (("final_loss", "-"), ("final_eval_loss", "--")):
                if col not in rows or not np.isfinite(rows[col].astype(float)).any():
                    continue
                agg = [aggregate.column_aggregate(rows[rows.depth == d], col) for d in depths]
                y = np.array([a.value for a in agg])
                ax.plot(depths, y, color=color[line], linestyle=style, marker="o" if style == "-" else "s",
                        markersize=4, label=" ".join(map(str, line)) if style == "-" else None)
                if rows["seed"].nunique() > 1:
                    ax.fill_between(depths, [a.lo for a in agg], [a.hi for a in agg], color=color[line],
                                    alpha=0.15 if style == "-" else 0.07, linewidth=0)
            bad = rows[rows.diverged.astype(bool)]
            if not bad.empty:
                ax.scatter(bad.depth, bad.initial_loss, marker="x", s=50, color=color[line], zorder=3)
        chance_line(ax, sub)
        ax.set_xscale("log", base=2)
        ax.set_xticks(values(df, "depth"), [str(d) for d in values(df, "depth")])
        ax.set_xlabel("depth L (number of blocks)")
        ax.set_title(_panel_title(df, panel_cols, pkey), fontsize="small")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("final loss (nats/token)")
    axes[0, 0].plot([], [], color="k", linestyle="--", marker="s", markersize=4, label="eval loss (dashed)")
    if df["diverged"].astype(bool).any():
        axes[0, 0].scatter([], [], marker="x", color="k", label="diverged seed (at its initial loss)")
    outside_legend(fig, axes[0, 0])
    lr_note = "best lr per point" if df["lr"].nunique() > 1 else ""
    suptitle(fig, "Final loss vs depth: train (solid) and eval (dashed), mean over seeds that did not diverge, "
             "band = spread over seeds", lr_note)
    return fig


def stability_map(df: pd.DataFrame) -> Figure | None:
    """Heatmap over depth × block of the fraction of runs that trained, one panel per optimizer (× clip when
    clipping varies: the "panel" axes of jaxnorm.axes), pooled over seeds and the other axes (lrs, norms,
    attentions); each square is annotated trained/total. Where no cell learned the task (`outcome.learned_anything`:
    then no run counts as trained), it maps the fraction of runs that did not diverge instead, and says so."""
    if not has_training(df):
        return None
    learned = outcome.learned_anything(df)
    df = df.assign(_trained=trained(df) if learned else ~df["diverged"].astype(bool))
    panel_cols = tuple(with_figure("panel"))
    panels = _panels(df, panel_cols)
    blocks, depths = values(df, "block"), values(df, "depth")
    fig, axes = grid(1, len(panels), w=max(4.2, 0.75 * len(depths) + 2.4), h=max(3.0, 0.42 * len(blocks) + 1.8))
    image = None
    for ax, pkey in zip(axes[0], panels):
        sub = _select(df, panel_cols, pkey)
        frac = np.full((len(blocks), len(depths)), np.nan)
        for i, b in enumerate(blocks):
            for j, d in enumerate(depths):
                runs = sub[(sub.block == b) & (sub.depth == d)]["_trained"]
                if len(runs):
                    frac[i, j] = runs.mean()
                    ax.text(j, i, f"{int(runs.sum())}/{len(runs)}", ha="center", va="center", fontsize="small",
                            color="white" if frac[i, j] < 0.25 else "black")
        image = ax.imshow(frac, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_yticks(range(len(blocks)), blocks)
        ax.set_xlabel("depth L")
        ax.set_title(_panel_title(df, panel_cols, pkey), fontsize="small")
    what = "trained" if learned else "did not diverge"
    fig.colorbar(image, ax=axes[0, -1], label=f"fraction of runs that {what}")
    rule = outcome.describe() if learned else ("no cell learned beyond the context-free loss (what ignoring the "
                                               "input reaches), so none counts as trained")
    suptitle(fig, f"Stability map: runs that {what} / runs",
             f"{rule}; pooled over {', '.join(['seeds', *pooled_nouns()])}")
    return fig


def loss_curves(metrics: pd.DataFrame, panel: str = "block", df: pd.DataFrame | None = None) -> Figure | None:
    """Train loss vs step: one column per block, one row per combination of the other varying axes but depth
    and learning rate (optimizer, clip, ...), one line per cell (colour = depth, style = learning rate); eval
    loss as squares at the evaluation steps; the task's chance loss (from `df`, `results.load`) dotted. The
    legend names depths and learning rates once, however many cells there are."""
    if metrics.empty or "loss" not in metrics or metrics["step"].max() <= 0:
        return None
    m = metrics.dropna(subset=["loss"])
    row_cols = row_axes(m, (panel, "depth", "lr"))
    rows = list(m.groupby(row_cols, sort=False, dropna=False)) if row_cols else [((), m)]
    panels, depths, lrs = values(m, panel), values(m, "depth"), values(m, "lr")
    color = dict(zip(depths, colors(len(depths))))
    style = {lr: LINESTYLES[i % len(LINESTYLES)] for i, lr in enumerate(lrs)}
    ymax = 1.3 * float(m[m.step == m.step.min()]["loss"].max())
    fig, axes = grid(len(rows), len(panels), sharey=True, h=PANEL_H + (0.8 if len(rows) == 1 else 0.2))
    for r, (_, row_m) in enumerate(rows):
        row_label = label_of(row_m.iloc[0], row_cols)
        for ax, p in zip(axes[r], panels):
            for cid, cell in row_m[row_m[panel] == p].groupby("cell_id", sort=False):
                table = cell.pivot_table(index="step", columns="seed", values="loss", aggfunc="first")
                d, lr = cell.depth.iloc[0], cell.lr.iloc[0]
                mean_band(ax, table.index.to_numpy(), table.to_numpy().T, color=color[d], linestyle=style[lr])
                evals = metrics[(metrics.cell_id == cid)].dropna(subset=["eval_loss"]) if "eval_loss" in metrics else None
                if evals is not None and not evals.empty:
                    ev = evals.pivot_table(index="step", columns="seed", values="eval_loss", aggfunc="first")
                    center, _, _ = aggregate.profile(ev.to_numpy().T, geometric=False)
                    ax.plot(ev.index.to_numpy(), center, color=color[d], linestyle="none", marker="s", markersize=4,
                            markerfacecolor="white")
            if df is not None:
                chance_line(ax, df[df[panel] == p] if panel in df else df)
            ax.set_ylim(0, ymax)
            ax.set_title(f"{panel}={p}" + (f" — {row_label}" if row_label else ""), fontsize="small")
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("loss (nats/token)")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    key = axes[0, 0]  # the legend's entries, drawn once: depth colours, lr styles, eval squares, chance
    for d in depths:
        key.plot([], [], color=color[d], label=f"L={d}")
    for lr in lrs:
        key.plot([], [], color="k", linestyle=style[lr], label=f"lr={lr:g}")
    key.plot([], [], color="k", linestyle="none", marker="s", markerfacecolor="white", label="eval loss")
    outside_legend(fig, key)
    suptitle(fig, "Training loss (mean over seeds, band = spread over seeds; squares: eval loss; "
             "y clipped at 1.3 × the initial loss)")
    return fig


def lr_sensitivity_curves(df: pd.DataFrame, panel: str = "block") -> Figure | None:
    """Capped final loss vs learning rate: one column per block, one row per combination of the other varying
    axes but depth (optimizer, clip, norm, attention), one line per depth; each line's legend entry gives its
    LR sensitivity E_lr[min(L(lr), L_0) − min L] (`results.lr_sensitivity`). Rows keep a legend to a few
    entries however large the grid is."""
    if not has_training(df) or df["lr"].nunique() < 2:
        return None
    sens = results.lr_sensitivity(df)
    keys = [c for c in results.group_columns() if c in df.columns]
    df = df.assign(_capped=capped_loss(df))
    row_cols = row_axes(df, (panel, "depth"), keys)
    rows = list(df.groupby(row_cols, sort=False, dropna=False)) if row_cols else [((), df)]
    panels, depths, lrs = values(df, panel), values(df, "depth"), values(df, "lr")
    depth_color = dict(zip(depths, colors(len(depths))))
    fig, axes = grid(len(rows), len(panels), sharey=True, h=2.9)
    for r, (row_key, row_df) in enumerate(rows):
        row_label = label_of(row_df.iloc[0], row_cols)
        for ax, p in zip(axes[r], panels):
            sub = row_df[row_df[panel] == p]
            for gkey, g in sub.groupby(keys, sort=False, dropna=False):
                table = g.pivot_table(index="lr", columns="seed", values="_capped", aggfunc="first")
                match = sens
                for k, v in zip(keys, gkey if isinstance(gkey, tuple) else (gkey,)):
                    match = match[match[k] == v]
                s = f" (sens {match.lr_sensitivity.iloc[0]:.3g})" if len(match) else ""
                depth = g["depth"].iloc[0]
                mean_band(ax, table.index.to_numpy(dtype=float), table.to_numpy().T, color=depth_color[depth],
                          marker="o", markersize=4, label=f"L={depth}{s}")
            ax.set_xscale("log")
            ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{panel}={p}" + (f" — {row_label}" if row_label else ""), fontsize="small")
            legend(ax)
        axes[r, 0].set_ylabel("final train loss,\ncapped at initial loss")
    for ax in axes[-1]:
        ax.set_xlabel("peak learning rate")
    suptitle(fig, "Loss vs learning rate (diverged = initial loss); legend: LR sensitivity, Wortsman et al. 2023")
    return fig


def logit_growth(df: pd.DataFrame, metrics: pd.DataFrame, layers: Mapping, panel: str = "block") -> Figure | None:
    """Max attention logit (over layers and heads) and mean output log Z over training, one line per
    learning rate, one row per block, at the deepest depth (other axes fixed to their first value)."""
    if not has_training(df) or df["lr"].nunique() < 2:
        return None
    cells, caption = fix_others(cells_of(df), keep=(panel, "lr", "depth"))
    deepest = cells.depth.max()
    cells = cells[cells.depth == deepest]
    caption = f"depth={deepest}" + (f", {caption}" if caption else "")
    panels, lrs = values(cells, panel), values(cells, "lr")
    color = dict(zip(lrs, colors(len(lrs), "plasma")))
    fig, axes = grid(len(panels), 2, h=2.9)
    for r, p in enumerate(panels):
        ax_logit, ax_z = axes[r]
        for cell in cells[cells[panel] == p].sort_values("lr").itertuples():
            lay = layers.get(cell.cell_id, {})
            if "attn_logit_max" in lay:
                a = np.asarray(lay["attn_logit_max"], dtype=np.float64)  # [P, S, L, H]
                y = a.reshape(a.shape[0], a.shape[1], -1).max(axis=2).T   # [S, P]
                mean_band(ax_logit, lay["layer_steps"], y, color=color[cell.lr], label=f"lr={cell.lr:g}")
            z = metrics[(metrics.cell_id == cell.cell_id)].dropna(subset=["log_z"]) if "log_z" in metrics else None
            if z is not None and not z.empty:
                table = z.pivot_table(index="step", columns="seed", values="log_z", aggfunc="first")
                mean_band(ax_z, table.index.to_numpy(), table.to_numpy().T, color=color[cell.lr],
                          label=f"lr={cell.lr:g}")
        ax_logit.set_ylabel(f"{p}\nmax attention logit")
        ax_z.set_ylabel("mean log Z of output logits")
        for ax in (ax_logit, ax_z):
            ax.grid(alpha=0.3)
            if r == len(panels) - 1:
                ax.set_xlabel("step")
        if r == 0:
            legend(ax_z, title="learning rate")
    suptitle(fig, "Attention-logit and output log Z growth (mean over seeds, band = spread over seeds)", caption)
    return fig
