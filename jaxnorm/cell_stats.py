"""The per-seed numbers of a finished cell (summary.json's `per_seed`, one row of results.csv each).

Everything here is a pure function of a `History` and a seed index; `jaxnorm.rundir` writes the result and
`jaxnorm.aggregate` summarises it over seeds.

The headline depth statistic is `grad_decades_*`: the least-squares slope of log10‖∂loss/∂θ_l‖ against the
relative layer position (l + ½)/L, i.e. how many decades the gradient grows from the input (0) to the
output (1) — positive: larger towards the output (vanishing towards the input), negative: the opposite.
Unlike the first/last-layer ratio it uses every layer, so one noisy layer cannot flip its sign. The ratio
is kept as a secondary column (`grad_ratio_*`).

A gradient can vanish past float32's range: below ~1e-38 (float32's smallest normal number; XLA:CPU flushes
smaller ones to zero) it is exactly 0 in the backward pass itself, its logarithm is -inf and the slope is
undefined (NaN). `grad_zero_layers_*` / `act_grad_zero_layers_*` count such layers, so that a NaN slope from
a gradient that vanished completely is told apart from one that overflowed or turned NaN (jaxnorm.findings
says which).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxnorm.history import History

FINAL_WINDOW = 10  # final/best train loss and accuracy are means over this many consecutive steps


def _ratio(arr: np.ndarray | None, index: int, s: int) -> float | None:
    """‖first layer‖ / ‖last layer‖ of a [steps, S, L] array at one step; < 1 means the first layers
    get less gradient than the last (vanishing towards the input), > 1 the opposite."""
    if arr is None or arr.shape[0] == 0:
        return None
    row = arr[index, s]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(row[0] / row[-1])


def decades_slope(norms_L: np.ndarray) -> float:
    """Least-squares slope of log10(norm) against (l + ½)/L over all L layers: decades of growth from the
    input to the output. NaN for fewer than two layers or any non-positive / non-finite norm."""
    y = np.asarray(norms_L, dtype=np.float64)
    L = y.shape[0]
    if L < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return float("nan")
    x = (np.arange(L) + 0.5) / L
    x = x - x.mean()
    return float(np.dot(x, np.log10(y)) / np.dot(x, x))


def _decades(arr: np.ndarray | None, index: int, s: int) -> float | None:
    if arr is None or arr.shape[0] == 0:
        return None
    return decades_slope(arr[index, s])


def _zero_layers(arr: np.ndarray | None, index: int, s: int) -> int | None:
    """How many layers' norms are exactly 0 at one step (a gradient that vanished below float32's range)."""
    if arr is None or arr.shape[0] == 0:
        return None
    return int(np.sum(np.asarray(arr[index, s]) == 0))


def _window_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Means of every run of w consecutive values (len(x) − w + 1 of them)."""
    c = np.cumsum(np.concatenate([[0.0], x.astype(np.float64)]))
    return (c[w:] - c[:-w]) / w


def _layer_max(arr: np.ndarray | None, step: Any, s: int, reduce: Any = np.nanmax) -> float | None:
    """Max (or `reduce`) over everything but the logged-step and seed axes (layers, heads) at `step`;
    None when nothing there is finite (a diverged seed), rather than numpy's all-NaN warning."""
    if arr is None:
        return None
    with np.errstate(all="ignore"):
        v = np.asarray(arr[step])
        v = v[:, s] if isinstance(step, slice) else v[s]
        return float(reduce(v[np.isfinite(v)])) if np.isfinite(v).any() else None


def _last_layer(arr: np.ndarray | None, step: int, s: int) -> float | None:
    return None if arr is None else float(arr[step, s, -1])


def depth_statistics(h: History, s: int) -> dict[str, float | None]:
    """`grad_decades_{init,final}` (all parameters) and `grad_decades_<group>_{init,final}` per parameter
    group, `act_grad_decades_{init,final}` for the residual stream, the first/last-layer ratios, and how many
    layers' gradients are exactly 0 (`grad_zero_layers_*`, `act_grad_zero_layers_*`)."""
    out: dict[str, float | None] = {}
    for when, index in (("init", 0), ("final", -1)):
        out[f"grad_decades_{when}"] = _decades(h.layers.get("grad_norm/all"), index, s)
        out[f"act_grad_decades_{when}"] = _decades(h.layers.get("act_grad_norm"), index, s)
        out[f"grad_ratio_{when}"] = _ratio(h.layers.get("grad_norm/all"), index, s)
        out[f"act_grad_ratio_{when}"] = _ratio(h.layers.get("act_grad_norm"), index, s)
        out[f"grad_zero_layers_{when}"] = _zero_layers(h.layers.get("grad_norm/all"), index, s)
        out[f"act_grad_zero_layers_{when}"] = _zero_layers(h.layers.get("act_grad_norm"), index, s)
        for key in sorted(k for k in h.layers if k.startswith("grad_norm/") and k != "grad_norm/all"):
            out[f"grad_decades_{key.split('/', 1)[1]}_{when}"] = _decades(h.layers[key], index, s)
    return out


def summarize_seed(h: History, s: int) -> dict[str, Any]:
    """The per-seed numbers of results.csv (see `jaxnorm.rundir.summarize`)."""
    loss, acc = h.metrics["loss"][:, s], h.metrics["accuracy"][:, s]
    n = loss.shape[0]
    w = max(1, min(FINAL_WINDOW, n))
    div_step = int(h.diverged_step[s])
    before = loss[:div_step] if div_step >= 0 else loss
    smooth = _window_mean(before, min(w, len(before))) if len(before) else np.array([np.nan])
    with np.errstate(all="ignore"):
        best = np.nanmin(smooth) if np.isfinite(smooth).any() else np.nan
        gnorm = h.metrics["grad_norm"][:, s]
        max_gnorm = np.nanmax(gnorm) if not np.isnan(gnorm).all() else np.nan
    ev = h.eval_loss[:, s]
    jac = h.jacobian
    nonfinite = h.nonfinite[s] if s < len(h.nonfinite) else {}
    return {
        "seed": h.seeds[s],
        "initial_loss": loss[0],
        "final_loss": loss[-w:].mean(),
        "best_loss": best,
        "final_accuracy": acc[-w:].mean(),
        "final_eval_loss": ev[-1] if len(ev) else None,
        "best_eval_loss": (np.nanmin(ev) if np.isfinite(ev).any() else None) if len(ev) else None,
        "final_eval_accuracy": h.eval_accuracy[-1, s] if len(ev) else None,
        "diverged": bool(h.diverged[s]),
        "diverged_step": div_step if div_step >= 0 else None,
        "max_grad_norm": max_gnorm,
        "final_grad_norm": gnorm[-1],
        "final_log_z": h.metrics["log_z"][-1, s] if "log_z" in h.metrics else None,
        **depth_statistics(h, s),
        "jac_spectral_max": _layer_max(jac.get("jac_spectral"), 0, s),
        "jac_spectral_max_final": _layer_max(jac.get("jac_spectral"), -1, s),
        "jac_end_to_end_init": jac["jac_end_to_end"][0, s] if "jac_end_to_end" in jac else None,
        "jac_end_to_end_final": jac["jac_end_to_end"][-1, s] if "jac_end_to_end" in jac else None,
        "attn_entropy_min_final": _layer_max(h.layers.get("attn_entropy"), -1, s, reduce=np.min),
        "attn_logit_max_final": _layer_max(h.layers.get("attn_logit_max"), -1, s),
        "token_alignment_last_init": _last_layer(h.layers.get("token_alignment"), 0, s),
        "token_alignment_last_final": _last_layer(h.layers.get("token_alignment"), -1, s),
        "branch_ratio_max_init": _layer_max(h.layers.get("branch_ratio"), 0, s),
        "amplification_max": _layer_max(h.layers.get("amplification"), slice(None), s),
        "nonfinite_step": nonfinite.get("step"),
        "nonfinite_what": nonfinite.get("what"),
        "nonfinite_layer": nonfinite.get("layer"),
    }
