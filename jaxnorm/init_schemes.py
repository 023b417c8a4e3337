"""Initialisation schemes and the depth-dependent constants of the remedies.

Every block kernel is first drawn Xavier-uniform (the modules' own initialiser). A scheme then rescales
(or redraws) the *stacked* parameters — shape [L, ...] — with one factor per layer, so the whole scheme
is a few array multiplies, never a Python loop over layers. A block's own gain (its placement's
`value_gain`: DeepNorm's β, Sub-LN's γ) is applied on top of the chosen scheme because it is part of that
block's definition.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.config import ModelConfig
from jaxnorm.paths import path_names
from jaxnorm.placements import deepnorm_alpha, deepnorm_beta, placement, subln_gamma

# Kernels of the residual branch's "value path": the ones DeepNorm, Sub-LN and T-Fixup rescale.
VALUE_PATH_KERNELS = ("value", "out", "fc1", "fc2")
OUTPUT_KERNELS = ("out", "fc2")  # the projections that write into the residual stream


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """DeepNorm's (α, β) for an encoder-only stack of N=depth layers (Wang et al. 2022, "DeepNet", Table 1):
    α = (2N)^¼ multiplies the residual, β = (8N)^-¼ is the Xavier gain of value/output/FFN weights."""
    return deepnorm_alpha(depth), deepnorm_beta(depth)


subln_gain = subln_gamma  # Sub-LN's weight gain γ = √(ln 2N) (Wang et al. 2022, "Magneto")


def admin_omega_closed_form(num_sublayers: int | jax.Array) -> float | jax.Array:
    """Admin's ω without profiling: √((N+1)/ln(N+1) − 1), N = number of residual sublayers (2 per block).

    This is the constant of Liu et al. 2020's released `admin_torch` package (e.g. N=12 → ω ≈ 2.017)."""
    n, m = num_sublayers, _math_of(num_sublayers)
    return m.sqrt((n + 1) / m.log(n + 1) - 1.0)


def _math_of(depth: int | jax.Array):
    """`math` for a Python depth (constants stay Python floats), `jnp` for a padded model's traced one."""
    return math if isinstance(depth, (int, float)) else jnp


def admin_omega_profiled(embed_var: jax.Array, branch_var_Lx2: jax.Array) -> jax.Array:
    """Admin's profiled ω (Liu et al. 2020, "Understanding the Difficulty of Training Transformers", §4).

    ω_i² is the variance of everything summed into the residual stream before sublayer i: the input
    embedding's variance plus Σ_{j<i} Var[f_j], from one forward pass with ω = 1. Sublayers are ordered
    attn_0, mlp_0, attn_1, ...; returns ω with shape [L, 2]."""
    var_flat = branch_var_Lx2.reshape(-1)
    before = embed_var + jnp.cumsum(var_flat) - var_flat  # exclusive prefix sum
    return jnp.sqrt(before).reshape(branch_var_Lx2.shape)


def t_fixup_scale(depth: int) -> float:
    """T-Fixup's encoder scale 0.67·N^-¼ (Huang et al. 2020, "Improving Transformer Optimization
    Through Better Initialization", §3.2), applied to value/output/FFN weights and input embeddings."""
    return 0.67 * depth ** -0.25


def small_init_std(d_model: int) -> float:
    """"SmallInit" std √(2/(5d)) (Nguyen & Salazar 2019, "Transformers without Tears")."""
    return math.sqrt(2.0 / (5.0 * d_model))


def _layer_factor(cfg: ModelConfig, names: tuple[str, ...], depth: int | jax.Array) -> jax.Array | float:
    """Multiplier for one stacked block kernel (scalar, or [L] broadcast over the layer axis). `depth` sets
    the depth constants: cfg.depth, or a padded model's active depth (jaxnorm.padding)."""
    module = names[-2] if len(names) >= 2 else ""
    factor: jax.Array | float = 1.0
    if cfg.init == "depth_scaled" and module in OUTPUT_KERNELS:
        factor = (2.0 * depth) ** -0.5  # GPT-2 style residual-projection scaling 1/√(2L)
    elif cfg.init == "t_fixup" and module in VALUE_PATH_KERNELS:
        factor = t_fixup_scale(depth)
    elif cfg.init == "ds_init":
        # Zhang, Titov & Sennrich 2019: U(±γ·α/√l) with γ the Xavier bound, α = 1, l = 1..L.
        factor = 1.0 / jnp.sqrt(jnp.arange(1, cfg.depth + 1, dtype=jnp.float32))
    gain = placement(cfg.block).value_gain  # DeepNorm's β, Sub-LN's γ: part of those blocks' definitions
    if gain is not None and module in VALUE_PATH_KERNELS:
        factor = factor * gain(depth)
    return factor


def apply_init_scheme(model: nnx.Module, cfg: ModelConfig, key: jax.Array,
                      depth: int | jax.Array | None = None) -> None:
    """Rescale (or redraw) `model`'s parameters in place according to cfg.init and cfg.block; `depth`
    (default cfg.depth) is the depth the constants are computed for."""
    depth = cfg.depth if depth is None else depth
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    new_leaves = []
    for (path, leaf), k in zip(leaves, keys):
        names = path_names(path)
        if "blocks" in names and names[-1] == "kernel":
            if cfg.init == "small":
                leaf = small_init_std(cfg.d_model) * jax.random.normal(k, leaf.shape, leaf.dtype)
            factor = _layer_factor(cfg, names, depth)
            if not isinstance(factor, float):
                factor = factor.reshape((-1,) + (1,) * (leaf.ndim - 1))
            leaf = leaf * factor
        elif names[-1] == "embedding" and names[0] == "token_embed" and cfg.init == "t_fixup":
            leaf = t_fixup_scale(depth) * cfg.d_model ** -0.5 * jax.random.normal(k, leaf.shape, leaf.dtype)
        new_leaves.append(leaf)
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, new_leaves))
