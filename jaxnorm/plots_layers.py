"""Per-layer figures: gradient, residual-gradient, Jacobian and token-alignment profiles along depth, and
end-to-end Jacobian spectra. Each takes `df` (`results.load`) and `layers` (cell_id -> layers.npz arrays,
e.g. `plots.LayerStore(run_dir)`) and returns a Figure, or None when no cell has the data.

Layout of the profile figures: one panel per block (columns), at initialisation (top row) and at the
end of training (bottom row), one line per depth over the relative layer position (l + ½)/L so depths
compare; the other axes are fixed to their first value (named in the title).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from jaxnorm.plots import cells_of, colors, fix_others, grid, legend, mean_band, suptitle, values

X_LABEL = "relative depth (l + ½)/L   (0 = input, 1 = output)"


def _profile_rows(cells: pd.DataFrame, layers: Mapping, key: str, steps_key: str) -> list[tuple[int, str]]:
    """(index into the step axis, row title): the first profile, and the last one when training ran."""
    last = 0
    for cid in cells.cell_id:
        steps = layers[cid].get(steps_key)
        if steps is not None and len(steps):
            last = max(last, int(steps[-1]))
    rows = [(0, "at initialisation (step 0)")]
    if last > 0:
        rows.append((-1, "end of training (last profile)"))
    return rows


def layer_profile(df: pd.DataFrame, layers: Mapping, key: str, *, ylabel: str, title: str, log: bool = True,
                  steps_key: str = "layer_steps", panel: str = "block") -> Figure | None:
    """The generic profile: `layers[cell][key]` [steps, S, L, ...] (trailing axes, e.g. heads, averaged)."""
    if df.empty:
        return None
    cells, caption = fix_others(cells_of(df), keep=(panel, "depth"))
    cells = cells[[key in layers.get(c, {}) for c in cells.cell_id]]
    if cells.empty:
        return None
    panels, depths = values(cells, panel), values(cells, "depth")
    color = dict(zip(depths, colors(len(depths))))
    rows = _profile_rows(cells, layers, key, steps_key)
    fig, axes = grid(len(rows), len(panels), sharey="row")
    for r, (index, row_title) in enumerate(rows):
        for c, p in enumerate(panels):
            ax = axes[r, c]
            for cell in cells[cells[panel] == p].sort_values("depth").itertuples():
                arr = np.asarray(layers[cell.cell_id][key], dtype=np.float64)[index]  # [S, L, ...]
                arr = arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2)
                L = arr.shape[1]
                mean_band(ax, (np.arange(L) + 0.5) / L, arr, label=f"L={cell.depth}", color=color[cell.depth],
                          log=log, marker="o" if L <= 16 else None, markersize=3)
            if log:
                ax.set_yscale("log")
            ax.set_xlim(0, 1)
            ax.set_title(f"{p} — {row_title}", fontsize="small")
            ax.grid(alpha=0.3, which="both" if log else "major")
            if c == 0:
                ax.set_ylabel(ylabel)
            if r == len(rows) - 1:
                ax.set_xlabel(X_LABEL)
            if r == 0 and c == len(panels) - 1:
                legend(ax, title="depth")
    suptitle(fig, title, caption)
    return fig


def grad_profile(df: pd.DataFrame, layers: Mapping, group: str = "all") -> Figure | None:
    """‖∂loss/∂θ_l‖₂ of layer l's parameters in `group` (all, attn_qk, attn_vo, mlp, norm)."""
    return layer_profile(df, layers, f"grad_norm/{group}", ylabel=f"‖∂loss/∂θ_l‖₂  ({group} parameters)",
                         title="Parameter-gradient norm per layer (mean over seeds, band = min–max)")


def act_grad_profile(df: pd.DataFrame, layers: Mapping) -> Figure | None:
    """‖∂loss/∂x_l‖ of the residual stream entering layer l."""
    return layer_profile(df, layers, "act_grad_norm", ylabel="‖∂loss/∂x_l‖  (residual stream)",
                         title="Residual-stream gradient per layer (mean over seeds, band = min–max)")


def jacobian_profile(df: pd.DataFrame, layers: Mapping) -> Figure | None:
    """‖∂x_{l+1}/∂x_l‖₂ by power iteration; > 1 amplifies, < 1 attenuates the backward signal."""
    return layer_profile(df, layers, "jac_spectral", ylabel="‖∂x_{l+1}/∂x_l‖₂  (spectral norm)",
                         steps_key="jacobian_steps",
                         title="Layer-to-layer Jacobian spectral norm (mean over seeds, band = min–max)")


def token_alignment(df: pd.DataFrame, layers: Mapping) -> Figure | None:
    """Mean pairwise cosine of the token vectors entering each layer; → 1 is rank collapse."""
    fig = layer_profile(df, layers, "token_alignment", ylabel="mean pairwise cosine of tokens", log=False,
                        title="Token alignment per layer (1 = all tokens parallel: rank collapse)")
    if fig is not None:
        for ax in fig.axes:
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    return fig


def jacobian_spectrum(df: pd.DataFrame, layers: Mapping, panel: str = "block") -> Figure | None:
    """Histograms of the singular values of ∂x_L/∂x_0 (all seeds pooled) at the smallest and largest depth,
    one panel per block, at the first and last Jacobian probe. Needs ProbeConfig(spectrum=True)."""
    if df.empty:
        return None
    cells, caption = fix_others(cells_of(df), keep=(panel, "depth"))
    cells = cells[["jac_singular_values" in layers.get(c, {}) for c in cells.cell_id]]
    if cells.empty:
        return None
    depths = values(cells, "depth")
    shown = sorted({depths[0], depths[-1]})
    cells = cells[cells.depth.isin(shown)]
    panels = values(cells, panel)
    rows = _profile_rows(cells, layers, "jac_singular_values", "jacobian_steps")
    sv = {c: np.asarray(layers[c]["jac_singular_values"], dtype=np.float64) for c in cells.cell_id}
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in sv.values()] or [np.ones(1)])
    hi = finite.max() if finite.size else 1.0
    lo = max(finite.min(), hi * 1e-8) if finite.size else 1e-8
    bins = np.geomspace(lo, hi * 1.0001, 40) if hi > lo else np.geomspace(lo / 2, hi * 2, 40)
    color = dict(zip(shown, colors(len(shown), "coolwarm")))
    fig, axes = grid(len(rows), len(panels), sharey="row")
    for r, (index, row_title) in enumerate(rows):
        for c, p in enumerate(panels):
            ax = axes[r, c]
            for cell in cells[cells[panel] == p].sort_values("depth").itertuples():
                s = sv[cell.cell_id][index].ravel()
                s = np.clip(s[np.isfinite(s)], lo, None)
                ax.hist(s, bins=bins, histtype="stepfilled", alpha=0.45, color=color[cell.depth],
                        edgecolor=color[cell.depth], label=f"L={cell.depth}")
            ax.set_xscale("log")
            ax.set_title(f"{p} — {row_title}", fontsize="small")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("count (all seeds)")
            if r == len(rows) - 1:
                ax.set_xlabel("singular value of ∂x_L/∂x_0 (< 1e-8·max: at left edge)")
            if r == 0 and c == len(panels) - 1:
                legend(ax, title="depth")
    suptitle(fig, "End-to-end Jacobian singular values at the smallest and largest depth", caption)
    return fig
