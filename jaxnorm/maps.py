"""The residual stream's maps as plain functions, for `jax.jacfwd`, `jax.jvp`, `jax.linearize` in a notebook.

A model is given as an nnx `jaxnorm.Model`, or as `(graphdef, params, rest)` (what `jaxnorm.init` and
`jaxnorm.load_params` return), or as `(model_cfg, params, rest)`. Every map runs in eval mode (no running
statistics move, no dropout) on a whole batch x: float[B, T, D], exactly as the Jacobian probes do:

- `block_map(model, l)`: x_l ↦ x_{l+1}, layer l's block (0-based; it receives its index, as Mix-LN needs).
- `stack_map(model, start=0, stop=None)`: x_start ↦ x_stop through layers start..stop-1 (default the whole
  stack, x_0 ↦ x_L).
- `stream(model, tokens)`: x_0 ... x_L of a token batch stacked [L + 1, B, T, D]: the points the probes
  linearise the maps at (x_0 is the embedding, positions included).

The recorded `jac_spectral[l]` estimates the largest singular value of the Jacobian of `block_map(model, l)`
at `stream(model, probe_tokens)[l]`, taken over the whole probe batch at once (a [B·T·D, B·T·D] matrix:
attention couples positions, batch elements stay independent blocks); `jac_end_to_end` that of `stack_map`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.config import ModelConfig

__all__ = ["LayerFns", "layer_fns", "block_map", "stack_map", "stream"]


class LayerFns(NamedTuple):
    """A model cut at its residual stream: `embed(tokens) -> x_0`, `block(state_l, x_l) -> x_{l+1}` with
    `states` the blocks' stacked state (layer l's slice is `state_l`), and the number of layers."""

    embed: Callable[[jax.Array], jax.Array]
    block: Callable[[Any, jax.Array], jax.Array]
    states: Any
    depth: int


def functional(model: Any) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, rest) of an nnx Model, a (graphdef, params, rest) or a (model_cfg, params, rest)."""
    if isinstance(model, nnx.Module):
        return nnx.split(model, nnx.Param, ...)
    if isinstance(model, tuple) and len(model) == 3:
        head, params, rest = model
        if isinstance(head, ModelConfig):
            from jaxnorm.model import graphdef_of

            head = graphdef_of(head)
        return head, params, rest
    raise TypeError(f"model: invalid value of type {type(model).__name__}; allowed: a jaxnorm.Model, "
                    "(graphdef, params, rest) or (model_cfg, params, rest)")


def layer_fns(graphdef: nnx.GraphDef, params: Any, rest: Any) -> LayerFns:
    """The embedding and the per-layer block function of a model (eval mode), its stacked block state
    carrying each layer's index."""
    model = nnx.merge(graphdef, params, rest)
    block_graphdef, stacked = nnx.split(model.encoder.blocks)
    depth = model.encoder.depth

    def block(state_l: Any, x_BxTxD: jax.Array) -> jax.Array:
        block_state, index = state_l
        return nnx.merge(block_graphdef, block_state)(x_BxTxD, train=False, layer=index)[0]

    return LayerFns(model.embed, block, (stacked, jnp.arange(depth)), depth)


def _check_layer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: invalid value {value!r}; allowed: an integer >= {low} and <= {high}")
    return value


def block_map(model: Any, layer: int) -> Callable[[jax.Array], jax.Array]:
    """x_l ↦ x_{l+1} of layer `layer` (float[B, T, D] -> float[B, T, D])."""
    fns = layer_fns(*functional(model))
    state_l = jax.tree.map(lambda a: a[_check_layer("layer", layer, 0, fns.depth - 1)], fns.states)
    return lambda x_BxTxD: fns.block(state_l, x_BxTxD)


def stack_map(model: Any, start: int = 0, stop: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """x_start ↦ x_stop through layers start, ..., stop - 1 (a scan, as the model runs them)."""
    fns = layer_fns(*functional(model))
    stop = fns.depth if stop is None else _check_layer("stop", stop, 1, fns.depth)
    states = jax.tree.map(lambda a: a[_check_layer("start", start, 0, stop - 1):stop], fns.states)
    return lambda x_BxTxD: jax.lax.scan(lambda x, s: (fns.block(s, x), None), x_BxTxD, states)[0]


def stream(model: Any, tokens_BxT: jax.Array) -> jax.Array:
    """x_0, ..., x_L of `tokens_BxT` stacked [L + 1, B, T, D] (eval mode)."""
    fns = layer_fns(*functional(model))
    x0_BxTxD = fns.embed(jnp.asarray(tokens_BxT))
    xL_BxTxD, xs_LxBxTxD = jax.lax.scan(lambda x, s: (fns.block(s, x), x), x0_BxTxD, fns.states)
    return jnp.concatenate([xs_LxBxTxD, xL_BxTxD[None]])
