"""The Transformer: token embedding (+ positions) -> Encoder (scan over stacked blocks) -> head.

Built once as an NNX module, then used through a functional core: `init` splits it into
(graphdef, params, rest) and `apply` merges them inside plain `jax.jit` / `jax.grad` / `jax.vmap`.
`rest` holds the non-parameter state (BatchNorm running statistics, σReparam's power-iteration vectors).

Blocks are created stacked (every block parameter has a leading layer axis L) and applied with
`jax.lax.scan` over the split block state, so compile time does not grow with depth. The scan body
adds a per-layer `delta` to the stream entering each layer: feeding zeros and differentiating with
respect to it yields ∂loss/∂x_l for every layer from the one backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.blocks import Block, depth_constants
from jaxnorm.config import ModelConfig
from jaxnorm.init_schemes import admin_omega_closed_form, admin_omega_profiled, apply_init_scheme
from jaxnorm.norms import make_norm
from jaxnorm.padding import is_padded
from jaxnorm.placements import norm_kind, placement

# Sequences used by Admin's profiling pass (random tokens: the pass only needs typical activations).
ADMIN_PROFILE_BATCH = 8


def sinusoidal_positions(T: int, D: int) -> jax.Array:
    """Fixed sin/cos position encodings (Vaswani et al. 2017, §3.5)."""
    pos_T1 = jnp.arange(T, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, D, 2, dtype=jnp.float32) / D)
    pe_TxD = jnp.zeros((T, D), jnp.float32)
    pe_TxD = pe_TxD.at[:, 0::2].set(jnp.sin(pos_T1 * freq))
    return pe_TxD.at[:, 1::2].set(jnp.cos(pos_T1 * freq)[:, : D // 2])


class Encoder(nnx.Module):
    """L stacked blocks, applied by scan (or, for tests only, an unrolled Python loop)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.depth, self.scan, self.remat = cfg.depth, cfg.scan, cfg.remat

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)

    def __call__(self, x_BxTxD: jax.Array, *, train: bool, deltas_LxBxTxD: jax.Array | None = None,
                 active_depth: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`active_depth` (a padded model's, unbatched int32): layers from it on are skipped by `lax.cond`,
        not computed as identities; their diagnostics are zeros (jaxnorm.padding cuts them away)."""
        chex.assert_rank(x_BxTxD, 3)  # shape checks run once, when traced
        graphdef, params, rest = nnx.split(self.blocks, nnx.Param, ...)
        state = (params, rest)
        if deltas_LxBxTxD is not None:
            chex.assert_shape(deltas_LxBxTxD, (self.depth, *x_BxTxD.shape))
        else:
            deltas_LxBxTxD = jnp.zeros((self.depth,), x_BxTxD.dtype)  # broadcasts as a scalar 0 per layer

        def run(x, params_l, rest_l, index):
            block = nnx.merge(graphdef, params_l, rest_l)
            y, diag = block(x, train=train, layer=index)
            # Only non-parameter state (running statistics, power-iteration vectors) can change.
            return y, (nnx.state(block, nnx.Not(nnx.Param)), diag)

        def skip(x, params_l, rest_l, index):
            _, (_, diag) = jax.eval_shape(run, x, params_l, rest_l, index)
            return x, (rest_l, jax.tree.map(lambda d: jnp.zeros(d.shape, d.dtype), diag))

        def layer(x, layer_in):
            (params_l, rest_l), delta, index = layer_in
            x = x + delta
            if active_depth is None:
                return run(x, params_l, rest_l, index)
            # An unbatched predicate (the layer index and the active depth are the same for every seed), so
            # under vmap this stays a branch: an inactive layer computes nothing, and reverse mode is exact.
            # The taken branch is rematerialised: differentiating a cond makes the skipped branch fill the
            # other branch's saved activations with zeros, and with remat those are only its inputs.
            return jax.lax.cond(index < active_depth, jax.checkpoint(run), skip, x, params_l, rest_l, index)

        if self.remat:
            layer = jax.checkpoint(layer)
        if self.scan:
            x_BxTxD, (new_state, diags) = jax.lax.scan(layer, x_BxTxD,
                                                       (state, deltas_LxBxTxD, jnp.arange(self.depth)))
        else:  # reference path: same parameters, one layer at a time
            outs = []
            for l in range(self.depth):
                x_BxTxD, out = layer(x_BxTxD, (*jax.tree.map(lambda a: a[l], (state, deltas_LxBxTxD)), l))
                outs.append(out)
            new_state, diags = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        if train:  # eval mode leaves state untouched by contract, so a closed-over model stays immutable
            nnx.update(self.blocks, new_state)
        return x_BxTxD, diags


class Model(nnx.Module):
    """A Transformer for per-position prediction.

    >>> import jaxnorm
    >>> from flax import nnx
    >>> model = jaxnorm.Model(jaxnorm.ModelConfig(depth=2, d_model=32, num_heads=2, d_ff=64), rngs=nnx.Rngs(0))
    >>> logits, aux = model(jnp.zeros((1, 8), jnp.int32))
    >>> logits.shape, aux["attn_entropy"].shape
    ((1, 8, 32), (2, 2))
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, active_depth: int | jax.Array | None = None):
        """`active_depth`: for a padded cfg (jaxnorm.padding), how many of its cfg.depth layers act (default
        all); it may be traced, so one compiled initialisation serves every depth."""
        self.cfg = cfg
        D = cfg.d_model
        self.token_embed = nnx.Embed(cfg.vocab_size, D, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)
        if cfg.positions == "learned":
            self.pos_embed = nnx.Param(jax.nn.initializers.normal(0.02)(rngs.params(), (cfg.max_len, D)))
        self.encoder = Encoder(cfg, rngs=rngs)
        if placement(cfg.block).final_norm:
            self.final_norm = make_norm(norm_kind(cfg.block, cfg.norm), D, cfg, rngs=rngs)
        self.head = nnx.Linear(D, cfg.vocab_size, kernel_init=jax.nn.initializers.xavier_uniform(),
                               bias_init=jax.nn.initializers.zeros, rngs=rngs)
        depth = cfg.depth
        if is_padded(cfg):
            depth = jnp.asarray(cfg.depth if active_depth is None else active_depth, jnp.float32)
            self._set_depth_data(depth)
        apply_init_scheme(self, cfg, rngs.params(), depth)
        self.encoder.blocks.attn.refresh_sigma()  # σReparam's stored u, v must follow rescaled kernels
        if placement(cfg.block).residual == "admin":
            self._set_admin_omega(rngs.params(), depth)

    def _set_depth_data(self, depth: jax.Array) -> None:
        """A padded model's layer flags and depth constants, from its active depth (see Block)."""
        blocks, cfg = self.encoder.blocks, self.cfg
        blocks.layer_active[...] = jnp.arange(cfg.depth) < depth
        for name, value in depth_constants(placement(cfg.block), cfg, depth).items():
            getattr(blocks, name)[...] = jnp.full((cfg.depth,), value, jnp.float32)

    def embed(self, tokens_BxT: jax.Array) -> jax.Array:
        T = tokens_BxT.shape[1]
        x_BxTxD = self.token_embed(tokens_BxT)
        if self.cfg.positions == "learned":
            return x_BxTxD + self.pos_embed[...][:T]
        return x_BxTxD + sinusoidal_positions(T, self.cfg.d_model)

    def unembed(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        if hasattr(self, "final_norm"):
            x_BxTxD = self.final_norm(x_BxTxD, train=train)
        return self.head(x_BxTxD)

    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False, deltas_LxBxTxD: jax.Array | None = None,
                 active_depth: jax.Array | None = None, delta_out_BxTxD: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Logits [B, T, V] and per-layer diagnostics, each stacked [L, ...]. `active_depth`: see Encoder.

        `delta_out_BxTxD` is added to the stack's output x_L before the final norm and head (zeros: its
        gradient is ∂loss/∂x_L); with it, the diagnostics also hold `out_act_rms` [], the RMS of x_L."""
        chex.assert_rank(tokens_BxT, 2)
        x_BxTxD = self.embed(tokens_BxT)
        x_BxTxD, diags = self.encoder(x_BxTxD, train=train, deltas_LxBxTxD=deltas_LxBxTxD,
                                      active_depth=active_depth)
        if delta_out_BxTxD is not None:
            chex.assert_equal_shape([delta_out_BxTxD, x_BxTxD])
            diags = {**diags, "out_act_rms": jnp.sqrt(jnp.mean(jnp.square(x_BxTxD.astype(jnp.float32))))}
            x_BxTxD = x_BxTxD + delta_out_BxTxD
        logits_BxTxV = self.unembed(x_BxTxD, train=train)
        chex.assert_shape(logits_BxTxV, (*tokens_BxT.shape, self.cfg.vocab_size))
        return logits_BxTxV, diags

    def _set_admin_omega(self, key: jax.Array, depth: int | jax.Array) -> None:
        """Admin's ω (Liu et al. 2020): closed form, or from one profiling forward pass with ω = 1."""
        cfg = self.cfg
        omega = self.encoder.blocks.admin_omega
        if cfg.admin_mode == "closed_form":
            omega[...] = jnp.full_like(omega[...], admin_omega_closed_form(2 * depth))
            return
        tokens = jax.random.randint(key, (ADMIN_PROFILE_BATCH, cfg.max_len), 0, cfg.vocab_size)
        rest_before = nnx.state(self, nnx.Not(nnx.Param))  # profiling must not move running statistics
        x0 = self.embed(tokens)
        _, diags = self.encoder(x0, train=False)
        nnx.update(self, rest_before)
        omega_Lx2 = admin_omega_profiled(jnp.var(x0), diags["branch_var"])
        omega[...] = jnp.broadcast_to(omega_Lx2[..., None], omega[...].shape)


# --- functional core ---------------------------------------------------------------------------------

def init(cfg: ModelConfig, key: jax.Array, active_depth: int | jax.Array | None = None
         ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, rest) of a freshly initialised model. Works under `jax.vmap` over keys.
    `active_depth`: see Model (padded configs only)."""
    return nnx.split(Model(cfg, rngs=nnx.Rngs(key), active_depth=active_depth), nnx.Param, ...)


def graphdef_of(cfg: ModelConfig) -> nnx.GraphDef:
    """The static structure for `cfg`, without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]


def apply(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, tokens_BxT: jax.Array, *,
          train: bool, deltas_LxBxTxD: jax.Array | None = None, active_depth: jax.Array | None = None,
          delta_out_BxTxD: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any], nnx.State]:
    """Pure forward pass: (logits, per-layer diagnostics, updated rest). `active_depth`: a padded model's
    active depth as an unbatched argument, so that its inactive layers are skipped (see Encoder);
    `delta_out_BxTxD`: see Model."""
    # copy=True: the caller's state may be closed over from an outer trace, whose Variables must not be mutated.
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits, diags = model(tokens_BxT, train=train, deltas_LxBxTxD=deltas_LxBxTxD, active_depth=active_depth,
                          delta_out_BxTxD=delta_out_BxTxD)
    return logits, diags, nnx.state(model, nnx.Not(nnx.Param))
