"""Every figure of a run directory: the list (FIGURES, the report's captions and order) and `draw_all`.

>>> from jaxnorm import figures
>>> paths = figures.draw_all("runs/quick")            # -> runs/quick/figures/*.png

The figure functions live in `plots_layers` (per-layer profiles, spectra) and `plots_training` (losses,
stability, learning rates); they share the helpers of `plots`. This module sits above all three, so none of
them imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
from matplotlib.figure import Figure

from jaxnorm import outcome, plots_layers as pl, plots_training as pt, results
from jaxnorm.plots import LayerStore, check_run_dir, save_atomic


# File name -> what it shows (the report's captions, in the report's order).
FIGURES = {
    "loss_vs_depth.png": "Final train (solid) and eval (dashed) loss vs depth; dotted = chance, dash-dotted (text "
                         "tasks) = the character frequencies' loss; × = a diverged seed at its initial loss.",
    "stability_map.png": "Fraction of runs that trained, per depth and block (" + outcome.describe() + "; where no "
                         "cell learned beyond that, the fraction that did not diverge).",
    "loss_curves.png": "Training loss vs step for every cell (colour = depth, line style = learning rate, a row per optimizer × clip; mean over seeds, band = spread; squares = eval loss; dotted = chance, dash-dotted = the character frequencies' loss).",
    "grad_profile.png": "Per-layer parameter-gradient norm ‖∂loss/∂θ_l‖ (all of layer l's parameters) at "
                        "initialisation (step 0) and at the last step.",
    "grad_profile_mlp_out.png": "Per-layer gradient norm of the FFN output matrix W2 alone, ‖∂loss/∂W2_l‖ "
                                "(the quantity of Xiong et al. 2020, Fig. 3) at step 0 and at the last step.",
    "act_grad_profile.png": "Residual-stream gradient ‖∂loss/∂x_l‖ per layer at step 0 and at the last step.",
    "jacobian_profile.png": "Layer-to-layer Jacobian ∂x_(l+1)/∂x_l per layer: spectral norm (solid; by Lanczos or "
                            "power iteration, as the runs' probe config says, named in the figure) and the "
                            "Hutchinson estimate of the Frobenius norm / √d_model (dashed).",
    "jacobian_spectrum.png": "Singular values of the end-to-end Jacobian ∂x_L/∂x_0 at the smallest and largest depth.",
    "token_alignment.png": "Token alignment (mean pairwise cosine of token vectors; 1 = rank collapse) per layer.",
    "lr_sensitivity.png": "Final loss vs learning rate; the legend gives LR sensitivity (Wortsman et al. 2023).",
    "logit_growth.png": "Max attention logit and mean output log Z over training, per learning rate.",
}


def figure_makers() -> dict[str, Callable[[pd.DataFrame, Mapping, Callable[[], pd.DataFrame]], Figure | None]]:
    """File name -> function(df, layers, metrics) drawing it; the order is the report's."""
    return {
        "loss_vs_depth.png": lambda df, lay, met: pt.loss_vs_depth(df),
        "stability_map.png": lambda df, lay, met: pt.stability_map(df),
        "loss_curves.png": lambda df, lay, met: pt.loss_curves(met(), df=df),
        "grad_profile.png": lambda df, lay, met: pl.grad_profile(df, lay),
        "grad_profile_mlp_out.png": lambda df, lay, met: pl.grad_profile(df, lay, "mlp_out"),
        "act_grad_profile.png": lambda df, lay, met: pl.act_grad_profile(df, lay),
        "jacobian_profile.png": lambda df, lay, met: pl.jacobian_profile(df, lay),
        "jacobian_spectrum.png": lambda df, lay, met: pl.jacobian_spectrum(df, lay),
        "token_alignment.png": lambda df, lay, met: pl.token_alignment(df, lay),
        "lr_sensitivity.png": lambda df, lay, met: pt.lr_sensitivity_curves(df),
        "logit_growth.png": lambda df, lay, met: pt.logit_growth(df, met(), lay),
    }


def draw_all(run_dir: str | Path) -> list[Path]:
    """Write every figure the run has data for into <run_dir>/figures/; returns their paths.

    A figure whose data is absent (one depth, no training, no learning-rate sweep, no singular values)
    is skipped, and a stale copy of it from an earlier call is removed so the report never shows it."""
    run_dir = check_run_dir(run_dir)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    df = results.load(run_dir)
    layers = LayerStore(run_dir)
    metrics_cache: list[pd.DataFrame] = []

    def metrics() -> pd.DataFrame:
        if not metrics_cache:
            metrics_cache.append(results.load_metrics(run_dir))
        return metrics_cache[0]

    written = []
    for name, make in figure_makers().items():
        fig = make(df, layers, metrics) if not df.empty else None
        path = out / name
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        save_atomic(fig, path)
        written.append(path)
    return written
