"""The metric registry: every quantity a run records, declared once.

Each `Metric` says where it is computed, under which `ProbeConfig` switch, whether it has a layer axis (a
padded model's inactive layers are then cut from it, `jaxnorm.padding`), whether it is a per-step scalar
written to metrics.jsonl (`jaxnorm.rundir`), whether it is a norm (log axis, geometric mean over seeds:
`jaxnorm.aggregate`), and which figure shows it. The step and the probes compute the values;
tests/test_metrics.py checks that what they return is exactly what is declared here, so a metric added to
the code but not here (or the other way round) fails a test instead of silently going missing.

Adding a metric: compute it in `jaxnorm.probes` (per layer or Jacobian) or `jaxnorm.step` (per step),
add its entry below, and test its value against an independent reference.
This module imports nothing heavy (the command line and the results readers use it without JAX).
"""

from __future__ import annotations

import dataclasses

# Parameter groups of the per-layer gradient norms `grad_norm/<group>` (see jaxnorm.probes.leaf_group).
GROUPS = ("attn_qk", "attn_vo", "mlp_in", "mlp_out", "norm", "all")
KINDS = ("step", "layer", "jacobian")


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    kind: str                  # "step": a scalar per step; "layer": per layer at probed steps; "jacobian": probes
    meaning: str
    family: str | None = None  # the ProbeConfig switch that records it (None: always recorded)
    per_layer: bool = True     # a layer axis after the seed axis: padded models cut it to the active layers
    norm: bool = False         # a norm or ratio of norms: log axis, geometric mean over seeds
    figure: str | None = None  # the figure that shows it

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Metric.kind: invalid value {self.kind!r}; allowed: {', '.join(KINDS)}")

    @property
    def jsonl(self) -> bool:
        """Per-step scalars go to metrics.jsonl (every log_every-th step, the last step, eval points)."""
        return self.kind == "step"


def _step(name: str, meaning: str, norm: bool = False) -> Metric:
    return Metric(name, "step", meaning, per_layer=False, norm=norm, figure="loss_curves.png" if name == "loss" else None)


_ENTRIES = (
    _step("loss", "train cross-entropy of the step's batch (nats/token; z-loss not included)"),
    _step("accuracy", "token accuracy of the step's batch"),
    _step("log_z", "mean log-partition log Z of the output logits (Wortsman et al. 2023)"),
    _step("grad_norm", "global gradient norm before clipping", norm=True),
    _step("grad_norm_clipped", "global gradient norm after clipping", norm=True),
    _step("clipped", "whether clipping changed the gradient"),
    _step("update_norm", "global norm of the optimizer's update", norm=True),
    _step("lr", "learning rate of the step"),
    *(Metric(f"grad_norm/{g}", "layer", f"‖∂loss/∂θ_l‖ of layer l's {g} parameters", "grads", norm=True,
             figure="grad_profile_mlp_out.png" if g == "mlp_out" else "grad_profile.png" if g == "all" else None)
      for g in GROUPS),
    Metric("param_norm", "layer", "‖θ_l‖ of layer l's parameters", "grads", norm=True),
    Metric("update_ratio", "layer", "‖Δθ_l‖/‖θ_l‖ of the optimizer's update", "grads", norm=True),
    Metric("act_grad_norm", "layer", "‖∂loss/∂x_l‖ of the residual stream entering layer l", "activations",
           norm=True, figure="act_grad_profile.png"),
    Metric("act_rms", "layer", "RMS of the residual stream entering layer l", "activations", norm=True),
    Metric("out_act_grad_norm", "layer", "‖∂loss/∂x_L‖ of the stack's output (before the final norm and head)",
           "activations", per_layer=False, norm=True),
    Metric("out_act_rms", "layer", "RMS of the stack's output x_L", "activations", per_layer=False, norm=True),
    Metric("branch_ratio", "layer", "‖F(x)‖/‖x‖ of the attention and MLP branches [L, 2]", "activations", norm=True),
    Metric("attn_entropy", "layer", "attention entropy per layer and head [L, H] (Zhai et al. 2023)", "attention"),
    Metric("attn_logit_max", "layer", "max attention logit per layer and head [L, H] (Wortsman et al. 2023)",
           "attention", figure="logit_growth.png"),
    Metric("token_alignment", "layer", "mean pairwise cosine of the tokens entering layer l (1 = rank collapse)",
           "alignment", figure="token_alignment.png"),
    Metric("rank1_residual", "layer", "distance of the stream from rank 1 (Dong et al. 2021)", "alignment"),
    Metric("amplification", "layer", "output change caused by the step's update (Liu et al. 2020)",
           "amplification", per_layer=False, norm=True),
    Metric("jac_spectral", "jacobian", "‖∂x_{l+1}/∂x_l‖₂ (Lanczos on JᵀJ, or power iteration)", "jacobian",
           norm=True, figure="jacobian_profile.png"),
    Metric("jac_frobenius", "jacobian", "‖∂x_{l+1}/∂x_l‖_F/√dim (Hutchinson)", "jacobian", norm=True,
           figure="jacobian_profile.png"),
    Metric("jac_end_to_end", "jacobian", "‖∂x_L/∂x_0‖₂", "jacobian", per_layer=False, norm=True),
    Metric("jac_singular_values", "jacobian", "every singular value of ∂x_L/∂x_0 (dense; tiny models)",
           "spectrum", per_layer=False, figure="jacobian_spectrum.png"),
)

# Read on every call of `names` and `recorded`, so a registration (a test's monkeypatch.setitem) counts at once.
METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}


def names(kind: str | None = None, *, per_layer: bool | None = None, jsonl: bool | None = None) -> tuple[str, ...]:
    """Registered metric names, filtered by kind, layer axis and metrics.jsonl membership."""
    return tuple(m.name for m in METRICS.values()
                 if (kind is None or m.kind == kind) and (per_layer is None or m.per_layer == per_layer)
                 and (jsonl is None or m.jsonl == jsonl))


def recorded(kind: str, probe_cfg) -> tuple[str, ...]:
    """The names of `kind` a run with this ProbeConfig records (its family switches)."""
    return tuple(m.name for m in METRICS.values()
                 if m.kind == kind and (m.family is None or getattr(probe_cfg, m.family)))
