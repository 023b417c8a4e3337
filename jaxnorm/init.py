"""Initialisation schemes and the depth-dependent constants of the remedies.

Every block kernel is first drawn Xavier-uniform (the modules' own initialiser). A scheme then rescales
(or redraws) the *stacked* parameters — shape [L, ...] — with one factor per layer, so the whole scheme
is a few array multiplies, never a Python loop over layers. Block-specific gains (DeepNorm's β, Sub-LN's
γ) are applied on top of the chosen scheme because they are part of those blocks' definitions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.config import ModelConfig
from jaxnorm.paths import path_names

# Kernels of the residual branch's "value path": the ones DeepNorm, Sub-LN and T-Fixup rescale.
VALUE_PATH_KERNELS = ("value", "out", "fc1", "fc2")
OUTPUT_KERNELS = ("out", "fc2")  # the projections that write into the residual stream


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """DeepNorm's (α, β) for an encoder-only stack of N=depth layers (Wang et al. 2022, "DeepNet", Table 1):
    α = (2N)^¼ multiplies the residual, β = (8N)^-¼ is the Xavier gain of value/output/FFN weights."""
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


def subln_gain(depth: int) -> float:
    """Sub-LN's weight gain γ = √(ln 2N) for an encoder of N layers (Wang et al. 2022, "Magneto")."""
    return math.sqrt(math.log(2.0 * depth))


def admin_omega_closed_form(num_sublayers: int) -> float:
    """Admin's ω without profiling: √((N+1)/ln(N+1) − 1), N = number of residual sublayers (2 per block).

    This is the constant of Liu et al. 2020's released `admin_torch` package (e.g. N=12 → ω ≈ 2.017)."""
    n = num_sublayers
    return math.sqrt((n + 1) / math.log(n + 1) - 1.0)


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


def _layer_factor(cfg: ModelConfig, names: tuple[str, ...]) -> jax.Array | float:
    """Multiplier for one stacked block kernel (scalar, or [L] broadcast over the layer axis)."""
    L = cfg.depth
    module = names[-2] if len(names) >= 2 else ""
    factor: jax.Array | float = 1.0
    if cfg.init == "depth_scaled" and module in OUTPUT_KERNELS:
        factor = 1.0 / math.sqrt(2.0 * L)  # GPT-2 style residual-projection scaling
    elif cfg.init == "t_fixup" and module in VALUE_PATH_KERNELS:
        factor = t_fixup_scale(L)
    elif cfg.init == "ds_init":
        # Zhang, Titov & Sennrich 2019: U(±γ·α/√l) with γ the Xavier bound, α = 1, l = 1..L.
        factor = 1.0 / jnp.sqrt(jnp.arange(1, L + 1, dtype=jnp.float32))
    if cfg.block == "deepnorm" and module in VALUE_PATH_KERNELS:
        factor = factor * deepnorm_constants(L)[1]
    if cfg.block == "subln" and module in VALUE_PATH_KERNELS:
        factor = factor * subln_gain(L)
    return factor


def apply_init_scheme(model: nnx.Module, cfg: ModelConfig, key: jax.Array) -> None:
    """Rescale (or redraw) `model`'s parameters in place according to cfg.init and cfg.block."""
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    new_leaves = []
    for (path, leaf), k in zip(leaves, keys):
        names = path_names(path)
        if "blocks" in names and names[-1] == "kernel":
            if cfg.init == "small":
                leaf = small_init_std(cfg.d_model) * jax.random.normal(k, leaf.shape, leaf.dtype)
            factor = _layer_factor(cfg, names)
            if not isinstance(factor, float):
                factor = factor.reshape((-1,) + (1,) * (leaf.ndim - 1))
            leaf = leaf * factor
        elif names[-1] == "embedding" and names[0] == "token_embed" and cfg.init == "t_fixup":
            leaf = t_fixup_scale(cfg.depth) * cfg.d_model ** -0.5 * jax.random.normal(k, leaf.shape, leaf.dtype)
        new_leaves.append(leaf)
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, new_leaves))
