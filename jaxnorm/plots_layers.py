"""Per-layer figures: gradient, residual-gradient, Jacobian and token-alignment profiles along depth, and
end-to-end Jacobian spectra. Each takes `df` (`results.load`) and `layers` (cell_id -> layers.npz arrays,
e.g. `plots.LayerStore(run_dir)`) and returns a Figure, or None when no cell has the data.

Layout of the profile figures: one panel per block (columns), at initialisation (top row, "step 0") and at
the end of training (bottom row, titled with the step of the last profile), one line per depth over the
relative layer position (l + ½)/L so depths compare; the other axes are fixed to their first value (named
in the title). Seeds are aggregated by `plots.mean_band` (the rule of `jaxnorm.aggregate`); the end-of-
training row leaves out diverged seeds, as the rule says. Legends sit right of the panels, over no data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxnorm.plots import cells_of, colors, grid, mean_band, shown_cells, suptitle, values

MAX_COLUMNS = 4          # panels per row when an initialisation-only figure wraps
MIN_PANEL_FACTOR = 4.0    # an unshared log panel spans at least this factor
MAX_SHARED_DECADES = 10.0 # panels share a log y axis unless the values span more decades than this
X_LABEL = "relative depth (l + ½)/L   (0 = input, 1 = output)"
GRAD_GROUPS = {"all": "all parameters of the layer", "attn_qk": "attention W_Q, W_K", "attn_vo": "attention W_V, W_O",
               "mlp_in": "FFN input matrix W1", "mlp_out": "FFN output matrix W2", "norm": "norm gains and biases"}
SPECTRAL_METHOD_NAMES = {"lanczos": "Lanczos", "power": "power iteration"}
LOG_BAND = "geometric mean over seeds (at the end: seeds that did not diverge), band = spread"
LIN_BAND = "mean over seeds (at the end: seeds that did not diverge), band = spread"


def _steps(layers: Mapping, cell_id: str, steps_key: str) -> np.ndarray | None:
    steps = layers[cell_id].get(steps_key)
    return None if steps is None or not len(steps) else np.asarray(steps)


def _profile_rows(cells: pd.DataFrame, layers: Mapping, steps_key: str) -> list[tuple[int, str]]:
    """(index into the step axis, which): the first profile ("init"), and the last ("end") when training ran."""
    last = max((int(st[-1]) for c in cells.cell_id if (st := _steps(layers, c, steps_key)) is not None), default=0)
    return [(0, "init"), (-1, "end")] if last > 0 else [(0, "init")]


def _row_title(panel_cells: pd.DataFrame, layers: Mapping, steps_key: str, index: int) -> str:
    """"step 0 (initialisation)", "step 40 (end of training)", naming the actual steps of the panel's profiles;
    a cell whose seeds all diverged stops early, and its last step is named too."""
    at = {}
    for cell in panel_cells.itertuples():
        st = _steps(layers, cell.cell_id, steps_key)
        if st is not None:
            at.setdefault(int(st[index]), []).append(f"L={cell.depth}")
    if index == 0:
        return "step " + "/".join(map(str, sorted(at))) + " (initialisation)" if at else "initialisation"
    if not at:
        return "end of training"
    last = max(at)
    title = f"step {last} (end of training)"
    early = [f"{', '.join(depths)} stopped at step {step}" for step, depths in sorted(at.items()) if step != last]
    return title + ("\n(" + "; ".join(early) + ")" if early else "")


def _panel_name(value: Any, setting: Mapping) -> str:
    """"post_ln", or "post_ln (rmsprop, lr=0.01)" where each panel shows its own setting (`plots.shown_cells`)."""
    return f"{value} ({setting[value]})" if setting.get(value) else f"{value}"


def _kept_seeds(df: pd.DataFrame, cell_id: str, lay: Mapping, index: int) -> np.ndarray | None:
    """Boolean mask over the seed axis: at the end of training, the seeds that did not diverge (the rule of
    `jaxnorm.aggregate`); at initialisation (or without the information) every seed, i.e. None."""
    if index == 0 or "diverged" not in df.columns or "seed" not in df.columns or "seeds" not in lay:
        return None
    rows = df[df.cell_id == cell_id]
    diverged = dict(zip(rows.seed.astype(int), rows.diverged.astype(bool)))
    return np.array([not diverged.get(int(s), False) for s in np.asarray(lay["seeds"])])


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (0.4, 2, 1e-05) instead of 4×10⁻¹."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def plain_log_ticks(ax) -> None:
    """Label `ax`'s log y axis with plain numbers (and its minor ticks when it spans under a decade or so)."""
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _legend(fig: Figure, ax, title: str, extra: Sequence[tuple[Line2D, str]] = ()) -> None:
    """The depth lines of `ax` (and `extra` proxy entries, e.g. line styles) in one legend right of the panels."""
    handles, labels = ax.get_legend_handles_labels()
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize="small", title=title,
                   title_fontsize="small", framealpha=0.7)


def layer_profile(df: pd.DataFrame, layers: Mapping, key: str, *, ylabel: str, title: str, log: bool = True,
                  steps_key: str = "layer_steps", panel: str = "block", dashed: str | None = None,
                  styles: Sequence[str] = ()) -> Figure | None:
    """The generic profile: `layers[cell][key]` [steps, S, L, ...] (trailing axes, e.g. heads, averaged).
    `dashed`: a second key drawn as a dashed line of the same colour (where the cell has it); `styles`:
    legend labels of the solid and dashed line styles."""
    if df.empty:
        return None
    cells, caption, setting = shown_cells(df, panel)
    cells = cells[[key in layers.get(c, {}) for c in cells.cell_id]]
    if cells.empty:
        return None
    panels, depths = values(cells, panel), values(cells, "depth")
    color = dict(zip(depths, colors(len(depths))))
    rows = _profile_rows(cells, layers, steps_key)
    # One profile row (initialisation only) with many panels wraps into rows of MAX_COLUMNS; panels share
    # their y axis unless one placement's values dwarf the others' (an exploding no_norm would flatten all).
    wrap = len(rows) == 1 and len(panels) > MAX_COLUMNS
    ncols = MAX_COLUMNS if wrap else len(panels)
    shared = not (log and _decades_spanned(cells, layers, (key, dashed)) > MAX_SHARED_DECADES)
    fig, axes = grid(-(-len(panels) // ncols) if wrap else len(rows), ncols,
                     sharey=(True if wrap else "row") if shared else False)
    slots = ([(0, c, axes[c // ncols, c % ncols]) for c in range(len(panels))] if wrap else
             [(r, c, axes[r, c]) for r in range(len(rows)) for c in range(len(panels))])
    for ax in axes.flat[len(slots):]:
        ax.axis("off")
    drawn: dict[tuple[int, int], bool] = {}  # (row, column) -> the panel has a value a log axis can show
    for r, c, ax in slots:
            index = rows[r][0]
            p = panels[c]
            here = cells[cells[panel] == p].sort_values("depth")
            drawable = False
            for cell in here.itertuples():
                lay = layers[cell.cell_id]
                keep = _kept_seeds(df, cell.cell_id, lay, index)
                for k, style in ((key, "-"), (dashed, "--")):
                    if k is None or k not in lay:
                        continue
                    arr = np.asarray(lay[k], dtype=np.float64)[index]  # [S, L, ...]
                    arr = arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2)
                    if keep is not None:
                        arr = arr[keep] if keep.any() else np.full_like(arr[:1], np.nan)
                    L = arr.shape[1]
                    drawable |= bool(np.any(np.isfinite(arr) & ((arr > 0) if log else True)))
                    mean_band(ax, (np.arange(L) + 0.5) / L, arr, label=f"L={cell.depth}" if style == "-" else None,
                              color=color[cell.depth], log=log, linestyle=style,
                              marker=("o" if style == "-" else "s") if L <= 16 else None,
                              markersize=3 if style == "-" else 2.5)
            drawn[r, c] = drawable
            if not drawable:
                ax.text(0.5, 0.5, "exactly 0 (or non-finite) at every layer:\nnothing to draw on a log axis"
                        if log else "no finite value", transform=ax.transAxes, ha="center", va="center",
                        fontsize="small", color="grey")
            ax.set_xlim(0, 1)
            ax.set_title(f"{_panel_name(p, setting)} — {_row_title(here, layers, steps_key, index)}", fontsize="small")
            ax.grid(alpha=0.3, which="both" if log else "major")
            if ax in axes[:, 0]:
                ax.set_ylabel(ylabel)
    if log:
        for r, c, ax in slots:
            # An empty panel takes the log scale only from panels it shares its y axis with that have data: a
            # log axis with no positive value anywhere has no range (ReZero's MLP gradients at initialisation,
            # exactly 0 with α = 0, in a sweep of ReZero alone).
            sharing = [k for k in drawn if wrap or k[0] == r] if shared else [(r, c)]
            if any(drawn[k] for k in sharing):
                ax.set_yscale("log")
                plain_log_ticks(ax)
                if not shared:
                    _at_least_a_factor(ax, MIN_PANEL_FACTOR)
            else:
                ax.set_yticks([])  # no value on any axis it shares: a linear scale's ticks would mean nothing
    fig.supxlabel(X_LABEL, fontsize="medium")
    extra = [(Line2D([], [], color="k", linestyle=ls), lab) for ls, lab in zip(("-", "--"), styles)]
    _legend(fig, axes[0, -1], "depth", extra)
    own_axes = "" if shared else "each panel has its own y axis"
    suptitle(fig, title, "; ".join(x for x in (LOG_BAND if log else LIN_BAND, caption, own_axes) if x))
    return fig


def _at_least_a_factor(ax, factor: float) -> None:
    """Widen a log y axis to span at least `factor` (ReZero's identity Jacobians, 1 ± 1e-7, would otherwise
    fill a panel with float noise)."""
    lo, hi = ax.get_ylim()
    if hi / lo < factor:
        mid = (lo * hi) ** 0.5
        ax.set_ylim(mid / factor ** 0.5, mid * factor ** 0.5)


def _decades_spanned(cells: pd.DataFrame, layers: Mapping, keys: Sequence[str | None]) -> float:
    """log10(max / min) over every finite positive value of `keys` in these cells (0 when there are none)."""
    values_ = [np.asarray(layers[c][k], dtype=np.float64).ravel() for c in cells.cell_id for k in keys
               if k is not None and k in layers[c]]
    v = np.concatenate(values_) if values_ else np.zeros(0)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.log10(v.max() / v.min())) if v.size else 0.0


def grad_profile(df: pd.DataFrame, layers: Mapping, group: str = "all") -> Figure | None:
    """‖∂loss/∂θ_l‖₂ of layer l's parameters in `group` (one of GRAD_GROUPS: all, attn_qk, attn_vo, mlp_in,
    mlp_out, norm). group="mlp_out" is the FFN output matrix W2, the quantity of Xiong et al. 2020, Fig. 3."""
    if group not in GRAD_GROUPS:
        raise ValueError(f"group={group!r}; allowed: {', '.join(GRAD_GROUPS)}")
    what = GRAD_GROUPS[group]
    theta = r"\theta_l" if group == "all" else {"mlp_out": "W_2", "mlp_in": "W_1"}.get(group, r"\theta_l")
    return layer_profile(df, layers, f"grad_norm/{group}", ylabel=rf"$\|\partial\,\mathrm{{loss}}/\partial {theta}\|_2$",
                         title=f"Parameter-gradient norm per layer: {what}")


def act_grad_profile(df: pd.DataFrame, layers: Mapping) -> Figure | None:
    """‖∂loss/∂x_l‖ of the residual stream entering layer l."""
    return layer_profile(df, layers, "act_grad_norm", ylabel=r"$\|\partial\,\mathrm{loss}/\partial x_l\|$",
                         title="Residual-stream gradient per layer, entering layer l")


def spectral_methods(layers: Mapping, cell_ids) -> list[str]:
    """How each cell's `jac_spectral` was computed ("Lanczos", "power iteration"), read from the resolved
    probe config in cells/<id>/summary.json; empty when `layers` is not a run directory's `LayerStore`."""
    run_dir = getattr(layers, "run_dir", None)
    found = []
    for cid in cell_ids:
        path = Path(run_dir) / "cells" / cid / "summary.json" if run_dir is not None else None
        if path is None or not path.is_file():
            continue
        method = json.loads(path.read_text()).get("resolved", {}).get("probe", {}).get("spectral_method")
        if method:
            found.append(SPECTRAL_METHOD_NAMES.get(method, method))
    return list(dict.fromkeys(found))


def jacobian_profile(df: pd.DataFrame, layers: Mapping, spectral_method: str | None = None) -> Figure | None:
    """‖∂x_{l+1}/∂x_l‖₂ (solid; Lanczos or power iteration, as the cells' probe config says, or
    `spectral_method`) and the Hutchinson estimate of ‖∂x_{l+1}/∂x_l‖_F/√d (dashed, same colour; the RMS
    singular value, never above the spectral norm). > 1 amplifies, < 1 attenuates the backward signal."""
    if spectral_method is None:
        method = " / ".join(spectral_methods(layers, cells_of(df).cell_id)) if not df.empty else ""
    else:
        method = SPECTRAL_METHOD_NAMES.get(spectral_method, spectral_method)
    by = f" by {method}" if method else ""
    fig = layer_profile(df, layers, "jac_spectral", dashed="jac_frobenius", steps_key="jacobian_steps",
                        ylabel=r"$\|\partial x_{l+1}/\partial x_l\|$",
                        styles=(r"spectral $\|\cdot\|_2$" + (f"\n({method})" if method else ""),
                                r"Frobenius $\|\cdot\|_F/\sqrt{d}$" + "\n(Hutchinson)"),
                        title=f"Layer-to-layer Jacobian: spectral norm{by} (solid), Hutchinson Frobenius "
                              f"norm / √d (dashed)")
    _reference_line(fig, 1.0)
    return fig


def _reference_line(fig: Figure | None, y: float) -> None:
    """A dotted horizontal line at `y` on every panel that shows data (not on a wrapped grid's empty slots)."""
    for ax in fig.axes if fig is not None else ():
        if ax.axison:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1)


def token_alignment(df: pd.DataFrame, layers: Mapping) -> Figure | None:
    """Mean pairwise cosine of the token vectors entering each layer; → 1 is rank collapse."""
    fig = layer_profile(df, layers, "token_alignment", ylabel="mean pairwise cosine of tokens", log=False,
                        title="Token alignment per layer (1 = all tokens parallel: rank collapse)")
    _reference_line(fig, 1.0)
    return fig


def jacobian_spectrum(df: pd.DataFrame, layers: Mapping, panel: str = "block") -> Figure | None:
    """Histograms of the singular values of ∂x_L/∂x_0 (all seeds pooled) at the smallest and largest depth,
    one panel per block, at the first and last Jacobian probe. Needs ProbeConfig(spectrum=True)."""
    if df.empty:
        return None
    cells, caption, setting = shown_cells(df, panel)
    cells = cells[["jac_singular_values" in layers.get(c, {}) for c in cells.cell_id]]
    if cells.empty:
        return None
    depths = values(cells, "depth")
    shown = sorted({depths[0], depths[-1]})
    cells = cells[cells.depth.isin(shown)]
    panels = values(cells, panel)
    rows = _profile_rows(cells, layers, "jacobian_steps")
    sv = {c: np.asarray(layers[c]["jac_singular_values"], dtype=np.float64) for c in cells.cell_id}
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in sv.values()] or [np.ones(1)])
    hi = finite.max() if finite.size else 1.0
    lo = max(finite.min(), hi * 1e-8) if finite.size else 1e-8
    bins = np.geomspace(lo, hi * 1.0001, 40) if hi > lo else np.geomspace(lo / 2, hi * 2, 40)
    color = dict(zip(shown, colors(len(shown), "coolwarm")))
    fig, axes = grid(len(rows), len(panels), sharey="row")
    for r, (index, _) in enumerate(rows):
        for c, p in enumerate(panels):
            ax = axes[r, c]
            here = cells[cells[panel] == p].sort_values("depth")
            for cell in here.itertuples():
                s = sv[cell.cell_id][index].ravel()
                s = np.clip(s[np.isfinite(s)], lo, None)
                ax.hist(s, bins=bins, histtype="stepfilled", alpha=0.45, color=color[cell.depth],
                        edgecolor=color[cell.depth], label=f"L={cell.depth}")
            ax.set_xscale("log")
            ax.set_title(f"{_panel_name(p, setting)} — {_row_title(here, layers, 'jacobian_steps', index)}",
                         fontsize="small")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("count (all seeds)")
            if r == len(rows) - 1:
                ax.set_xlabel(r"singular value of $\partial x_L/\partial x_0$  (< 1e-8·max: at left edge)")
    _legend(fig, axes[0, -1], "depth")
    suptitle(fig, "End-to-end Jacobian singular values at the smallest and largest depth", caption)
    return fig
