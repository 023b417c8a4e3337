"""Encoder blocks: where the residual connection and the normalisation sit.

Every block is one attention sublayer and one MLP sublayer. `Block.__call__(x, train=..., layer=...)` returns
the new residual stream and a dict of per-layer diagnostics; under the encoder's scan these come back
stacked with a leading layer axis [L, ...]. What each block variant does is its entry in
`jaxnorm.placements` (the table of update rules and papers is there); this module follows the entry's
residual scheme and never branches on a block's name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.attention import Attention
from jaxnorm.config import ModelConfig
from jaxnorm.norms import make_norm
from jaxnorm.padding import DepthData, is_padded
from jaxnorm.placements import norm_kind, placement

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}


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
        if placement(cfg.block).mlp_mid_norm:
            self.mid_norm = make_norm(norm_kind(cfg.block, cfg.norm), cfg.d_ff, cfg, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        h_BxTxF = _ACTIVATIONS[self.activation](self.fc1(x_BxTxD))
        if hasattr(self, "mid_norm"):
            h_BxTxF = self.mid_norm(h_BxTxF, train=train)
        return self.fc2(h_BxTxF).astype(x_BxTxD.dtype)


class Block(nnx.Module):
    """One encoder layer; `cfg.block` picks its `jaxnorm.placements` entry."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p = self.placement = placement(cfg.block)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        D, norm = cfg.d_model, norm_kind(cfg.block, cfg.norm)
        if p.norms:
            self.norm1 = make_norm(norm, D, cfg, rngs=rngs)
            self.norm2 = make_norm(norm, D, cfg, rngs=rngs)
        if p.branch_out_norms:
            self.norm1_out = make_norm(norm, D, cfg, rngs=rngs)
            self.norm2_out = make_norm(norm, D, cfg, rngs=rngs)
        if p.attn_out_norm:
            self.norm_attn_out = make_norm(norm, D, cfg, rngs=rngs)
        if p.residual == "rezero":
            # One gate per layer shared by both sublayers, as in the authors' reference implementation.
            self.rezero_alpha = nnx.Param(jnp.zeros((), jnp.float32))
        if p.residual == "admin":
            # ω for the attention (row 0) and MLP (row 1) residuals; the model sets it after profiling.
            self.admin_omega = nnx.Param(jnp.ones((2, D), jnp.float32))
        # Depth constants: Python floats, or for a padded model (depth as data, jaxnorm.padding) per-layer
        # values that the model sets from its active depth.
        constants = depth_constants(p, cfg, float(cfg.depth))
        if is_padded(cfg):
            self.layer_active = DepthData(jnp.ones((), bool))
            constants = {k: DepthData(jnp.float32(v)) for k, v in constants.items()}
        self.residual_scale = constants.get("residual_scale", 1.0)
        self.branch_scale = constants.get("branch_scale", 1.0)
        self.post_layers = constants.get("post_layers", 0.0)

    def __call__(self, x_BxTxD: jax.Array, *, train: bool,
                 layer: jax.Array | int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`layer`: this block's index in the stack (the mix scheme switches on it)."""
        if self.placement.residual == "mix":
            y, diag = self._mixed(x_BxTxD, train, layer < _value(self.post_layers))
        else:
            y, diag = self._forward(x_BxTxD, train, self.placement.residual)
        if hasattr(self, "layer_active"):  # a padded model's inactive layer is the identity
            y = jnp.where(self.layer_active[...], y, x_BxTxD)
        return y, diag

    def _mixed(self, x_BxTxD: jax.Array, train: bool, post: jax.Array | bool) -> tuple[jax.Array, dict]:
        """Post-LN where `post`, else Pre-LN: a per-layer switch inside the scan (`lax.cond`, so one branch
        runs). The branches are pure functions of the block's split state; in train mode the non-parameter
        state of the branch taken (running statistics, power-iteration vectors) is written back."""
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)

        def branch(scheme: str):
            def run(params, rest, x):
                block = nnx.merge(graphdef, params, rest)
                y, diag = block._forward(x, train, scheme)
                return y, diag, nnx.state(block, nnx.Not(nnx.Param))
            return run

        y, diag, new_rest = jax.lax.cond(post, branch("post"), branch("pre"), params, rest, x_BxTxD)
        if train:
            nnx.update(self, new_rest)
        return y, diag

    def _forward(self, x_BxTxD: jax.Array, train: bool, scheme: str) -> tuple[jax.Array, dict[str, jax.Array]]:
        p = self.placement
        diag = residual_diagnostics(x_BxTxD)
        n1 = (lambda h: self.norm1(h, train=train)) if hasattr(self, "norm1") else (lambda h: h)
        n2 = (lambda h: self.norm2(h, train=train)) if hasattr(self, "norm2") else (lambda h: h)
        attn = lambda h: self.attn(h, train=train)  # noqa: E731
        mlp = lambda h: self.mlp(h, train=train)  # noqa: E731

        # Each branch records (what it adds to the stream, the stream it is added to) for branch ratios.
        if scheme == "pre":
            fa, attn_diag = attn(n1(x_BxTxD))
            if p.attn_out_norm:
                fa = self.norm_attn_out(fa, train=train)
            if p.branch_out_norms:
                fa = self.norm1_out(fa, train=train)
            scale = _value(self.branch_scale)
            fa_added = scale * fa
            x1 = x_BxTxD + fa_added
            fm = mlp(n2(x1))
            if p.branch_out_norms:
                fm = self.norm2_out(fm, train=train)
            fm_added = scale * fm
            y = x1 + fm_added
            streams = (x_BxTxD, x1)
        elif scheme == "post":
            a = _value(self.residual_scale)
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(a * x_BxTxD + fa)
            fm = fm_added = mlp(x1)
            y = n2(a * x1 + fm + (x_BxTxD if p.b2t_skip else 0.0))
            streams = (a * x_BxTxD, a * x1)
        elif scheme == "rezero":
            g = self.rezero_alpha[...]
            fa, attn_diag = attn(x_BxTxD)
            fa_added = g * fa
            x1 = x_BxTxD + fa_added
            fm = mlp(x1)
            fm_added = g * fm
            y = x1 + fm_added
            streams = (x_BxTxD, x1)
        elif scheme == "admin":
            omega = self.admin_omega[...]
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(omega[0] * x_BxTxD + fa)
            fm = fm_added = mlp(x1)
            y = n2(omega[1] * x1 + fm)
            streams = (omega[0] * x_BxTxD, omega[1] * x1)
        elif scheme == "none":
            fa, attn_diag = attn(x_BxTxD)
            fa_added = fa
            x1 = n1(fa)
            fm = fm_added = mlp(x1)
            y = n2(fm)
            streams = (x_BxTxD, x1)
        else:  # Placement validation makes this unreachable
            raise ValueError(f"Placement.residual: unknown scheme {scheme!r}")

        diag.update(attn_diag)
        diag["branch_ratio"] = jnp.stack([
            _frobenius(fa_added) / jnp.maximum(_frobenius(streams[0]), 1e-12),
            _frobenius(fm_added) / jnp.maximum(_frobenius(streams[1]), 1e-12),
        ])
        # Variance of each raw branch output, the quantity Admin's profiling pass accumulates.
        diag["branch_var"] = jnp.stack([jnp.var(fa.astype(jnp.float32)), jnp.var(fm.astype(jnp.float32))])
        return y, diag


def depth_constants(p, cfg: ModelConfig, depth) -> dict:
    """The placement's depth constants for `depth` (a float, or a padded model's traced active depth):
    residual_scale (DeepNorm's α), branch_scale (depth-μP's L^-α), post_layers (Mix-LN's ⌊α·L⌋)."""
    out = {}
    if p.residual_scale is not None:
        out["residual_scale"] = p.residual_scale(depth)
    if p.branch_scale is not None:
        out["branch_scale"] = p.branch_scale(depth, cfg.depth_mup_alpha)
    if p.post_layers is not None:
        out["post_layers"] = p.post_layers(depth, cfg.mix_ln_alpha)
    return out
