"""Published effects on deep Transformers' trainability: each one's claim, its criterion and its verdict.

One `Effect` per row of `python -m experiments.reproduce`: the paper, the claim in one line, and a criterion
fixed here from the claim (its constants are module-level names, chosen before anything was measured and
never moved to fit a result). `Effect.verdict(values)` turns the numbers that
`experiments.effect_measurements.<name>` measured into a `Reproduction`: "agree", or "disagree" with the
failing part of the criterion in one line. This module only judges numbers (light: no JAX), so the criteria
are unit-tested against hand-computed inputs (tests/test_reproduce.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

# Criteria, from each paper's claim.
XIONG_POST_MIN_RATIO = 2.0             # "grows towards the output": at least 2x from the first to the last layer
XIONG_PRE_FLAT = (0.5, 2.0)            # "flat": within a factor of 2
TOP_GRAD_SLOPE = (-0.75, -0.25)        # L^-1/2, to within ±1/4 in the exponent
STREAM_SLOPE = (0.75, 1.25)            # linear (exponent 1), to within ±1/4
POST_CHANGE_MIN_SLOPE = 0.5            # O(N): exponent 1; at least half of it
BOUNDED_CHANGE_MAX_SLOPE = 0.5         # O(log N) grows slower than any power; at most N^1/2
TRAINED_FRACTION = 0.5                 # a cell trains when at least half its seeds do (jaxnorm.outcome per seed)
CONSTANT_TOLERANCE = 1e-6              # relative: the code's constants are the paper's formulas
UNSCALED_MAX_ENTROPY_RATIO = 0.7       # softmax saturates: entropy falls by at least 30% over the head sizes
SCALED_ENTROPY_BAND = (0.8, 1.25)      # scaled attention stays within ±20-25%
COLLAPSE_LAYER = 4                     # "within a few layers"
COLLAPSED_ALIGNMENT = 0.99             # rank 1: tokens parallel to within a cosine of 0.99
SKIP_MAX_ALIGNMENT = 0.95              # with skips the tokens stay distinguishable at the last layer
ISOMETRY_TOLERANCE = 1e-5              # every singular value is 1 to float32 rounding
LOGIT_MIN_GROWTH = 2.0                 # "grows": at least doubles in training
QK_NORM_MAX_GROWTH_SHARE = 0.5         # QK-norm's growth at most half of dot's
LOG_Z_NEAR_ZERO = 1.0                  # nats
Z_LOSS_MAX_SHARE = 0.5                 # z-loss at least halves |log Z|
QK_SCALED_MAX_ENTROPY_RATIO = 0.5      # entropy at least halves at the largest W_Q, W_K factor
SIGMA_ENTROPY_BAND = (0.95, 1.05)      # σReparam's entropy stays within ±5% at every factor


@dataclasses.dataclass(frozen=True)
class Reproduction:
    """One row of the table. `values`: the raw numbers measured (for the CSV and for programs)."""

    effect: str
    paper: str
    claim: str
    measured: str
    threshold: str
    agree: bool
    reason: str = ""
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "agree" if self.agree else f"disagree: {self.reason}"


Judge = Callable[[dict[str, Any]], tuple[str, list[str]]]  # values -> (measured text, failing parts)


@dataclasses.dataclass(frozen=True)
class Effect:
    name: str
    paper: str
    claim: str
    threshold: str
    judge: Judge

    def verdict(self, values: dict[str, Any]) -> Reproduction:
        measured, failures = self.judge(values)
        return Reproduction(self.name, self.paper, self.claim, measured, self.threshold, not failures,
                            "; ".join(failures), dict(values))


def loglog_slope(x, y) -> float:
    """Least-squares slope of ln y against ln x: the exponent k of y ∝ x^k. NaN for fewer than two points or
    any value that is not finite and > 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.shape != y.shape or not (np.all(np.isfinite(x) & (x > 0)) and np.all(np.isfinite(y) & (y > 0))):
        return float("nan")
    lx, ly = np.log(x) - np.log(x).mean(), np.log(y) - np.log(y).mean()
    return float(np.dot(lx, ly) / np.dot(lx, lx))


def within(value: float, band: tuple[float, float]) -> bool:
    return band[0] <= value <= band[1]


def _span(xs) -> str:
    return f"{xs[0]:g}..{xs[-1]:g}"


def _band(band: tuple[float, float]) -> str:
    return f"[{band[0]:g}, {band[1]:g}]"


# --- judges: the criterion of each effect ----------------------------------------------------------------

def _xiong_w2_profile(v):
    post, pre = v["post_ln"], v["pre_ln"]
    failures = []
    if not post >= XIONG_POST_MIN_RATIO:
        failures.append(f"Post-LN's W2 gradient changes {post:.2f}x from the first to the last layer, "
                        f"not ≥ {XIONG_POST_MIN_RATIO:g}x")
    if not within(pre, XIONG_PRE_FLAT):
        failures.append(f"Pre-LN's changes {pre:.2f}x, not flat")
    return f"last/first layer (L={v['depth']}): Post-LN {post:.2f}, Pre-LN {pre:.2f}", failures


def _xiong_preln_top_grad(v):
    slope = loglog_slope(v["depths"], v["last_w2"])
    failures = [] if within(slope, TOP_GRAD_SLOPE) else [f"slope {slope:+.2f}, not ≈ -0.5"]
    return f"slope {slope:+.2f} over L={_span(v['depths'])} ({v['last_w2'][0]:.3g} -> {v['last_w2'][-1]:.3g})", failures


def _preln_stream_growth(v):
    growth = np.asarray(v["out_sq"]) - np.asarray(v["in_sq"])
    slope, raw = loglog_slope(v["depths"], growth), loglog_slope(v["depths"], v["out_sq"])
    failures = [] if within(slope, STREAM_SLOPE) else [f"slope {slope:.2f}, not ≈ 1"]
    return (f"slope {slope:.2f} over L={_span(v['depths'])} (E‖x_L‖² {v['out_sq'][0]:.3g} -> "
            f"{v['out_sq'][-1]:.3g}; raw slope {raw:.2f})"), failures


def _liu_output_change(v):
    slopes = {b: loglog_slope(v["depths"], v[b]) for b in ("post_ln", "pre_ln", "admin")}
    failures = []
    if not slopes["post_ln"] >= POST_CHANGE_MIN_SLOPE:
        failures.append(f"Post-LN's slope {slopes['post_ln']:.2f} < {POST_CHANGE_MIN_SLOPE:g}")
    failures += [f"{name}'s slope {slopes[b]:.2f} > {BOUNDED_CHANGE_MAX_SLOPE:g}"
                 for b, name in (("pre_ln", "Pre-LN"), ("admin", "Admin")) if not slopes[b] <= BOUNDED_CHANGE_MAX_SLOPE]
    return (f"slope of ‖Δf‖² over L={_span(v['depths'])}: Post-LN {slopes['post_ln']:.2f}, "
            f"Pre-LN {slopes['pre_ln']:.2f}, Admin {slopes['admin']:.2f}"), failures


def _deepnet_depth(v):
    shallow, deep, n = v["shallow"], v["deep"], v["seeds"]
    # (label, cell id as effect_measurements names it, whether the claim says it trains)
    cells = (("Post-LN", shallow, f"post_ln_L{shallow}", True), ("Post-LN", deep, f"post_ln_L{deep}", False),
             ("DeepNorm", deep, f"deepnorm_L{deep}", True))
    failures = [f"{label} {'did not train' if should else 'trained'} at L={depth}"
                for label, depth, cell, should in cells if (v[f"{cell}_trained"] >= TRAINED_FRACTION * n) != should]
    text = ", ".join(f"{label} L={depth} {v[f'{cell}_loss']:.3g} ({v[f'{cell}_trained']}/{n})"
                     for label, depth, cell, _ in cells)
    return f"final loss (seeds trained): {text}", failures


def deepnet_alpha(n: float) -> float:
    """The paper's α = (2N)^¼ for an encoder of N layers, written out independently of jaxnorm's."""
    return (2.0 * n) ** 0.25


def deepnet_beta(n: float) -> float:
    """The paper's β = (8N)^-¼."""
    return (8.0 * n) ** -0.25


def _relative_error(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def _deepnorm_constants(v):
    n0 = v["model_depth"]
    errors = {"α": max(_relative_error(a, deepnet_alpha(n)) for n, a in zip(v["depths"], v["alpha"])),
              "β": max(_relative_error(b, deepnet_beta(n)) for n, b in zip(v["depths"], v["beta"])),
              f"the L={n0} model's α": _relative_error(v["model_alpha"], deepnet_alpha(n0))}
    for name, ratio in v["kernel_ratios"].items():
        want = 1.0 if name in ("query", "key") else deepnet_beta(n0)
        errors[f"its {name} kernel's gain"] = _relative_error(ratio, want)
    failures = [f"{k} off by {e:.1e} (relative)" for k, e in errors.items() if not e <= CONSTANT_TOLERANCE]
    return (f"α, β for N={_span(v['depths'])} and the L={n0} model's α {v['model_alpha']:.4f}, W_V gain "
            f"{v['kernel_ratios']['value']:.4f}: largest relative error {max(errors.values()):.1e}"), failures


def _unscaled_attention(v):
    ratio = {f: v[f][-1] / v[f][0] for f in ("dot_unscaled", "dot")}
    failures = []
    if not ratio["dot_unscaled"] <= UNSCALED_MAX_ENTROPY_RATIO:
        failures.append(f"unscaled entropy kept {ratio['dot_unscaled']:.2f} of its value")
    if not within(ratio["dot"], SCALED_ENTROPY_BAND):
        failures.append(f"scaled entropy moved {ratio['dot']:.2f}x")
    return (f"entropy d_k={_span(v['head_dims'])}: unscaled {v['dot_unscaled'][0]:.2f} -> "
            f"{v['dot_unscaled'][-1]:.2f}, scaled {v['dot'][0]:.2f} -> {v['dot'][-1]:.2f}"), failures


def _rank_collapse(v):
    collapsed, kept = v["no_residual"][COLLAPSE_LAYER], v["pre_ln"][-1]
    failures = []
    if not collapsed >= COLLAPSED_ALIGNMENT:
        failures.append(f"without skips the alignment after {COLLAPSE_LAYER} layers is {collapsed:.3f}")
    if not kept < SKIP_MAX_ALIGNMENT:
        failures.append(f"Pre-LN's alignment after {v['depth']} layers is {kept:.3f}")
    steps = ", ".join(f"{a:.3f}" for a in v["no_residual"][:COLLAPSE_LAYER + 1])
    return f"alignment no skips x_0..x_{COLLAPSE_LAYER}: {steps}; Pre-LN x_{v['depth']}: {kept:.3f}", failures


def _rezero_isometry(v):
    dev = v["max_deviation"]
    failures = [] if dev <= ISOMETRY_TOLERANCE else [f"a singular value is {dev:.1e} from 1"]
    return f"largest distance from 1: {dev:.1e}, over {v['count']} singular values (L={v['depth']})", failures


def _attn_logit_growth(v):
    growth = {f: v[f][1] / v[f][0] for f in ("dot", "qk_norm")}
    failures = []
    if not growth["dot"] >= LOGIT_MIN_GROWTH:
        failures.append(f"dot's largest logit grew only {growth['dot']:.2f}x in {v['steps']} steps")
    if not growth["qk_norm"] <= QK_NORM_MAX_GROWTH_SHARE * growth["dot"]:
        failures.append(f"QK-norm's grew {growth['qk_norm']:.2f}x, dot's {growth['dot']:.2f}x")
    return (f"largest logit in {v['steps']} steps: dot {v['dot'][0]:.3g} -> {v['dot'][1]:.3g}, "
            f"QK-norm {v['qk_norm'][0]:.3g} -> {v['qk_norm'][1]:.3g}"), failures


def _z_loss(v):
    off, on = abs(v["without"]), abs(v["with"])
    failures = []
    if not on <= LOG_Z_NEAR_ZERO:
        failures.append(f"with z-loss log Z is {v['with']:.2f} after {v['steps']} steps")
    if not on <= Z_LOSS_MAX_SHARE * off:
        failures.append(f"without it {v['without']:.2f}")
    return (f"log Z after {v['steps']} steps (start {v['log_z_init']:.2f}): without z-loss {v['without']:.2f}, "
            f"with {v['with']:.2f}"), failures


def _entropy_collapse(v):
    dot = v["dot"][-1] / v["dot"][0]
    sigma = [h / v["sigma_reparam"][0] for h in v["sigma_reparam"]]
    failures = []
    if not dot <= QK_SCALED_MAX_ENTROPY_RATIO:
        failures.append(f"dot's entropy kept {dot:.2f} of its value")
    if not all(within(r, SIGMA_ENTROPY_BAND) for r in sigma):
        failures.append(f"σReparam's moved to {min(sigma):.2f}..{max(sigma):.2f}x")
    return (f"entropy with W_Q, W_K ×{_span(v['factors'])}: dot {v['dot'][0]:.2f} -> {v['dot'][-1]:.3g}, "
            f"σReparam {v['sigma_reparam'][0]:.2f} -> {v['sigma_reparam'][-1]:.2f}"), failures


EFFECTS: tuple[Effect, ...] = (
    Effect("xiong_w2_profile", "Xiong et al. 2020, Fig. 3",
           "at init Post-LN's W2 gradient grows towards the output layer; Pre-LN's is flat",
           f"last/first layer: Post-LN ≥ {XIONG_POST_MIN_RATIO:g}, Pre-LN in {_band(XIONG_PRE_FLAT)}",
           _xiong_w2_profile),
    Effect("xiong_preln_top_grad", "Xiong et al. 2020, Thm. 1",
           "Pre-LN's last-layer W2 gradient at init scales as L^-1/2",
           f"log-log slope in {_band(TOP_GRAD_SLOPE)}", _xiong_preln_top_grad),
    Effect("preln_stream_growth", "Xiong et al. 2020, Lemma 2",
           "Pre-LN's residual stream E‖x_L‖² grows linearly in depth at init",
           f"log-log slope of E‖x_L‖² - E‖x_0‖² in {_band(STREAM_SLOPE)}", _preln_stream_growth),
    Effect("liu_output_change", "Liu et al. 2020 (Admin), Thm. 3",
           "a same-size parameter change moves the output O(N) for Post-LN, O(log N) for Pre-LN and Admin",
           f"log-log slope of ‖Δf‖²: Post-LN ≥ {POST_CHANGE_MIN_SLOPE:g}; Pre-LN, Admin ≤ "
           f"{BOUNDED_CHANGE_MAX_SLOPE:g}",
           _liu_output_change),
    Effect("deepnet_depth", "Wang et al. 2022 (DeepNet)",
           "Post-LN stops training as depth grows; DeepNorm trains at that depth",
           f"Post-LN trains shallow and fails deep, DeepNorm trains deep (≥ {TRAINED_FRACTION:.0%} of seeds trained, "
           "jaxnorm.outcome)", _deepnet_depth),
    Effect("deepnorm_constants", "Wang et al. 2022 (DeepNet), Table 1",
           "encoder-only: residual ×α = (2N)^1/4, value/output/FFN init gain β = (8N)^-1/4",
           f"code and built model equal the formulas to {CONSTANT_TOLERANCE:g} (relative)", _deepnorm_constants),
    Effect("unscaled_attention", "Vaswani et al. 2017, §3.2.1",
           "without 1/√d_k the logits grow with d_k and saturate the softmax; scaled attention does not",
           f"entropy largest/smallest d_k: unscaled ≤ {UNSCALED_MAX_ENTROPY_RATIO:g}, scaled in "
           f"{_band(SCALED_ENTROPY_BAND)}", _unscaled_attention),
    Effect("rank_collapse", "Dong et al. 2021",
           "pure attention without skips collapses to rank 1 within a few layers; skips prevent it",
           f"token alignment: no skips ≥ {COLLAPSED_ALIGNMENT:g} after {COLLAPSE_LAYER} layers; Pre-LN < "
           f"{SKIP_MAX_ALIGNMENT:g} after its last", _rank_collapse),
    Effect("rezero_isometry", "Bachlechner et al. 2020 (ReZero)",
           "at init ReZero is the identity: every singular value of ∂x_L/∂x_0 is 1",
           f"every singular value within {ISOMETRY_TOLERANCE:g} of 1", _rezero_isometry),
    Effect("attn_logit_growth", "Wortsman et al. 2023, §3.1",
           "at a high learning rate the largest attention logit grows without QK-norm; QK-norm holds it",
           f"dot: end/start ≥ {LOGIT_MIN_GROWTH:g}; QK-norm's ≤ {QK_NORM_MAX_GROWTH_SHARE:g}× dot's",
           _attn_logit_growth),
    Effect("z_loss", "Wortsman et al. 2023, §3.2",
           "z-loss 1e-4·log²Z keeps log Z near 0, which drifts without it",
           f"with z-loss log Z within ±{LOG_Z_NEAR_ZERO:g} of 0 and at most {Z_LOSS_MAX_SHARE:g}× as far from 0 as "
           "without", _z_loss),
    Effect("entropy_collapse", "Zhai et al. 2023 (σReparam)",
           "scaling W_Q, W_K up collapses attention entropy; σReparam holds it",
           f"entropy at the largest factor / at 1: dot ≤ {QK_SCALED_MAX_ENTROPY_RATIO:g}; σReparam in "
           f"{_band(SIGMA_ENTROPY_BAND)} at every factor", _entropy_collapse),
)
NAMES: tuple[str, ...] = tuple(e.name for e in EFFECTS)
BY_NAME: dict[str, Effect] = {e.name: e for e in EFFECTS}


def finite_numbers(values: Any) -> bool:
    """Whether every number in `values` (nested dicts and lists) is finite."""
    if isinstance(values, dict):
        return all(finite_numbers(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return all(finite_numbers(v) for v in values)
    return not isinstance(values, (int, float)) or math.isfinite(values)
