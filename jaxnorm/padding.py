"""Depth as data: one compiled program serves a model at every depth up to a maximum.

A sweep of the per-layer profile at initialisation (TrainConfig.steps = 0, the `init` preset) runs each
program once, so compiling is nearly all its cost, and every depth would compile its own programs. A
*padded* model instead stacks `depth` = the sweep's largest depth layers and is told at initialisation how
many of them act, `active` (a traced int32): layer l ≥ active passes its input through unchanged
(x_{l+1} = x_l, so ∂x_{l+1}/∂x_l = I), its parameters get zero gradients and zero updates, and every
depth-dependent constant (DeepNorm's α and β, depth-μP's L^-α, Sub-LN's γ, T-Fixup's and the depth-scaled
init's factors, Admin's closed-form ω) is computed from `active`, not from the stack's length. Random draws
are prefix-stable in the layer axis (with JAX's default `jax_threefry_partitionable`, a threefry counter is
the element's index), so the first `active` layers get exactly the parameters and probe vectors of an
unpadded model of that depth (tests/test_padding.py checks it for every block); per-layer results are
sliced back to `active` layers (`unpad_layers`).

The padded layers still run: a depth-2 cell padded to 64 computes 64 layers. At the sizes the init preset
uses that costs far less than compiling its programs again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm import metrics
from jaxnorm.config import ConfigError, ModelConfig
from jaxnorm.paths import path_names



@dataclasses.dataclass(frozen=True)
class PaddedModelConfig(ModelConfig):
    """A ModelConfig whose `depth` layers run only the first `active` ones, `active` given at init as data.
    A distinct type, so it never equals (nor shares compiled programs with) the unpadded ModelConfig."""


class DepthData(nnx.Variable):
    """Non-parameter state a padded model reads its depth from: a layer's on/off flag and the depth constants.
    Set once at initialisation; never trained (optimizers see only nnx.Param)."""


def padded_config(cfg: ModelConfig, depth: int) -> PaddedModelConfig:
    """`cfg` as a padded model of `depth` stacked layers (cfg.depth ≤ depth becomes the active depth at init)."""
    if depth < cfg.depth:
        raise ConfigError(f"pad_to: invalid value {depth!r}; allowed: an int >= the model's depth {cfg.depth}")
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)}
    return PaddedModelConfig(**dict(fields, depth=depth))


def is_padded(cfg: ModelConfig) -> bool:
    return isinstance(cfg, PaddedModelConfig)


def active_mask(rest: Any) -> jax.Array | None:
    """The [L] on/off flags of a padded model's layers from its non-parameter state, None if not padded."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(rest):
        if path_names(path)[-1] == "layer_active":
            return leaf
    return None


def mask_inactive(tree: Any, mask_L: jax.Array | None) -> Any:
    """Zero the block leaves ([L, ...]) of `tree` at inactive layers (a padded model's updates: decoupled weight
    decay would otherwise move parameters whose gradient is zero)."""
    if mask_L is None:
        return tree

    def one(path, leaf):
        if "blocks" not in path_names(path):
            return leaf
        return jnp.where(mask_L.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf, jnp.zeros_like(leaf))

    return jax.tree_util.tree_map_with_path(one, tree)


def unpad_layers(rows: dict[str, Any], active: int) -> dict[str, Any]:
    """Recorded rows [rows, S, L, ...] cut to their first `active` layers: every entry the metric registry
    (`jaxnorm.metrics`) declares per layer; the others (per seed, e.g. `jac_end_to_end`) stay whole."""
    per_layer = set(metrics.names(per_layer=True))
    return {k: v[:, :, :active] if k in per_layer else v for k, v in rows.items()}


def unpad_state(tree: Any, active: int) -> Any:
    """A padded model's host state (leading run axis S): leaves under `blocks` cut to their first `active`
    layers, and the depth data (DepthData) dropped, as the unpadded model of that depth holds it."""
    if isinstance(tree, nnx.State):
        tree = nnx.filter_state(tree, nnx.Not(DepthData))

    def one(path, leaf):
        return leaf[:, :active] if "blocks" in path_names(path) and jnp.ndim(leaf) >= 2 else leaf

    return jax.tree_util.tree_map_with_path(one, tree)
