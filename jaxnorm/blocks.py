"""Encoder blocks: where the residual connection and the normalisation sit.

Every block is one attention sublayer and one MLP sublayer. `Block.__call__(x, train=...)` returns the
new residual stream and a dict of per-layer diagnostics; under the encoder's scan these come back
stacked with a leading layer axis [L, ...]. N is the chosen norm, F an attention or MLP branch.

| block        | update per sublayer                        | source                                   |
|--------------|--------------------------------------------|------------------------------------------|
| post_ln      | x ← N(x + F(x))                            | Vaswani et al. 2017                      |
| pre_ln       | x ← x + F(N(x)); final N after the stack   | Xiong et al. 2020                        |
| sandwich     | x ← x + N₂(F(N₁(x)))                       | Ding et al. 2021 (CogView)               |
| deepnorm     | x ← LN(α·x + F(x)), α = (2L)^¼             | Wang et al. 2022 (DeepNet)               |
| rezero       | x ← x + α_l·F(x), α_l learned, starts at 0 | Bachlechner et al. 2020                  |
| admin        | x ← N(ω⊙x + F(x)), ω profiled              | Liu et al. 2020                          |
| no_norm      | x ← x + F(x)                               |                                          |
| no_residual  | x ← N(F(x))                                | rank-collapse baseline (Dong et al. 2021)|
| b2t          | h = N(x + A(x)); y = N(h + M(h) + x)       | Takase et al. 2022                       |
| normformer   | pre_ln + N after attention, head scales,   | Shleifer et al. 2021                     |
|              | N after the MLP activation                 |                                          |
| subln        | pre_ln + N before each output projection   | Wang et al. 2022 (Magneto)               |
| depth_mup    | x ← x + L^-α·F(N(x))                       | Yang et al. 2023; Bordelon et al. 2023   |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.attention import Attention
from jaxnorm.config import ModelConfig
from jaxnorm.init import deepnorm_constants
from jaxnorm.norms import make_norm
from jaxnorm.padding import DepthData, is_padded

# Blocks whose stack ends un-normalised, so the model adds a final norm before the head.
PRE_NORM_BLOCKS = ("pre_ln", "sandwich", "normformer", "subln", "depth_mup")
# Blocks with an extra norm inside each sublayer, in front of the output projection.
INNER_NORM_BLOCKS = ("normformer", "subln")

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}


def _norm_kind(cfg: ModelConfig) -> str:
    return "none" if cfg.block in ("rezero", "no_norm") else cfg.norm


def _frobenius(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def residual_diagnostics(x_BxTxD: jax.Array) -> dict[str, jax.Array]:
    """Cheap statistics of the residual stream entering a block."""
    x = x_BxTxD.astype(jnp.float32)
    T = x.shape[1]
    u = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    gram_BxTxT = jnp.einsum("btd,bsd->bts", u, u)
    # Mean pairwise cosine over distinct token pairs (rank collapse: Noci et al. 2022). 1 when every token
    # points the same way. With a single token there are no pairs; report 1 (trivially collapsed).
    pairs = max(T * (T - 1), 1)
    alignment = jnp.mean((jnp.sum(gram_BxTxT, axis=(1, 2)) - jnp.trace(gram_BxTxT, axis1=1, axis2=2)) / pairs)
    # Relative distance to the nearest rank-1 "all tokens equal" matrix (Dong et al. 2021), in Frobenius norm.
    centred = x - jnp.mean(x, axis=1, keepdims=True)
    rank1_residual = _frobenius(centred) / jnp.maximum(_frobenius(x), 1e-12)
    return {
        "act_rms": jnp.sqrt(jnp.mean(jnp.square(x))),
        "token_alignment": alignment if T > 1 else jnp.ones((), jnp.float32),
        "rank1_residual": rank1_residual,
    }


def _value(c: float | DepthData) -> float | jax.Array:
    """A depth constant: a Python float, or a padded model's per-layer value."""
    return c[...] if isinstance(c, DepthData) else c


class MLP(nnx.Module):
    """Position-wise feed-forward branch fc2(act(fc1(x))), with an optional norm after the activation
    (NormFormer's "FFN LN", Magneto's Sub-LN)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(kernel_init=jax.nn.initializers.xavier_uniform(), bias_init=jax.nn.initializers.zeros,
                  dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32, rngs=rngs)
        self.fc1 = nnx.Linear(cfg.d_model, cfg.d_ff, **kw)
        self.fc2 = nnx.Linear(cfg.d_ff, cfg.d_model, **kw)
        self.activation = cfg.activation
        if cfg.block in INNER_NORM_BLOCKS:
            self.mid_norm = make_norm(_norm_kind(cfg), cfg.d_ff, cfg, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        h_BxTxF = _ACTIVATIONS[self.activation](self.fc1(x_BxTxD))
        if hasattr(self, "mid_norm"):
            h_BxTxF = self.mid_norm(h_BxTxF, train=train)
        return self.fc2(h_BxTxF).astype(x_BxTxD.dtype)


class Block(nnx.Module):
    """One encoder layer; `cfg.block` picks the residual/norm placement (table in the module docstring)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.kind = cfg.block
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        kind, D, norm = cfg.block, cfg.d_model, _norm_kind(cfg)
        if kind not in ("rezero", "no_norm"):
            self.norm1 = make_norm(norm, D, cfg, rngs=rngs)
            self.norm2 = make_norm(norm, D, cfg, rngs=rngs)
        if kind == "sandwich":
            self.norm1_out = make_norm(norm, D, cfg, rngs=rngs)
            self.norm2_out = make_norm(norm, D, cfg, rngs=rngs)
        if kind == "normformer":
            self.norm_attn_out = make_norm(norm, D, cfg, rngs=rngs)
        if kind == "rezero":
            # One gate per layer shared by both sublayers, as in the authors' reference implementation.
            self.rezero_alpha = nnx.Param(jnp.zeros((), jnp.float32))
        if kind == "admin":
            # ω for the attention (row 0) and MLP (row 1) residuals; the model sets it after profiling.
            self.admin_omega = nnx.Param(jnp.ones((2, D), jnp.float32))
        residual_scale = deepnorm_constants(cfg.depth)[0] if kind == "deepnorm" else 1.0
        branch_scale = float(cfg.depth) ** -cfg.depth_mup_alpha if kind == "depth_mup" else 1.0
        if is_padded(cfg):  # depth as data (jaxnorm.padding): the model sets these from its active depth
            self.layer_active = DepthData(jnp.ones((), bool))
            if kind == "deepnorm":
                residual_scale = DepthData(jnp.float32(residual_scale))
            if kind == "depth_mup":
                branch_scale = DepthData(jnp.float32(branch_scale))
        self.residual_scale, self.branch_scale = residual_scale, branch_scale

    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        y, diag = self._forward(x_BxTxD, train=train)
        if hasattr(self, "layer_active"):  # a padded model's inactive layer is the identity
            y = jnp.where(self.layer_active[...], y, x_BxTxD)
        return y, diag

    def _forward(self, x_BxTxD: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        kind = self.kind
        diag = residual_diagnostics(x_BxTxD)
        n1 = (lambda h: self.norm1(h, train=train)) if hasattr(self, "norm1") else (lambda h: h)
        n2 = (lambda h: self.norm2(h, train=train)) if hasattr(self, "norm2") else (lambda h: h)
        attn = lambda h: self.attn(h, train=train)  # noqa: E731
        mlp = lambda h: self.mlp(h, train=train)  # noqa: E731

        # Each branch records (what it adds to the stream, the stream it is added to) for branch ratios.
        if kind in ("pre_ln", "depth_mup", "subln", "normformer", "sandwich"):
            fa, attn_diag = attn(n1(x_BxTxD))
            if kind == "normformer":
                fa = self.norm_attn_out(fa, train=train)
            if kind == "sandwich":
                fa = self.norm1_out(fa, train=train)
            scale = _value(self.branch_scale)
            fa_added = scale * fa
            x1 = x_BxTxD + fa_added
            fm = mlp(n2(x1))
            if kind == "sandwich":
                fm = self.norm2_out(fm, train=train)
            fm_added = scale * fm
            y = x1 + fm_added
            streams = (x_BxTxD, x1)
        elif kind in ("post_ln", "deepnorm", "no_norm", "b2t"):
            a = _value(self.residual_scale)
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(a * x_BxTxD + fa)
            fm = fm_added = mlp(x1)
            y = n2(a * x1 + fm + (x_BxTxD if kind == "b2t" else 0.0))
            streams = (a * x_BxTxD, a * x1)
        elif kind == "rezero":
            g = self.rezero_alpha[...]
            fa, attn_diag = attn(x_BxTxD)
            fa_added = g * fa
            x1 = x_BxTxD + fa_added
            fm = mlp(x1)
            fm_added = g * fm
            y = x1 + fm_added
            streams = (x_BxTxD, x1)
        elif kind == "admin":
            omega = self.admin_omega[...]
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(omega[0] * x_BxTxD + fa)
            fm = fm_added = mlp(x1)
            y = n2(omega[1] * x1 + fm)
            streams = (omega[0] * x_BxTxD, omega[1] * x1)
        elif kind == "no_residual":
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(fa)
            fm = fm_added = mlp(x1)
            y = n2(fm)
            streams = (x_BxTxD, x1)
        else:  # config validation makes this unreachable
            raise ValueError(f"ModelConfig.block: unknown value {kind!r}")

        diag.update(attn_diag)
        diag["branch_ratio"] = jnp.stack([
            _frobenius(fa_added) / jnp.maximum(_frobenius(streams[0]), 1e-12),
            _frobenius(fm_added) / jnp.maximum(_frobenius(streams[1]), 1e-12),
        ])
        # Variance of each raw branch output, the quantity Admin's profiling pass accumulates.
        diag["branch_var"] = jnp.stack([jnp.var(fa.astype(jnp.float32)), jnp.var(fm.astype(jnp.float32))])
        return y, diag
