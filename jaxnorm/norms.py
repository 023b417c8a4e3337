"""Normalisation layers compared by the sweep (config.NORMS), built by :func:`make_norm`.

Every layer maps x_BxTxD to y_BxTxD of the same shape and dtype, computes its statistics in float32
(bfloat16 variances are too coarse near eps) and names its learned affine parameters ``scale`` and
``bias``. The ``train`` flag only matters for batchnorm; the others accept it so blocks can call any
norm the same way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.config import NORMS, ModelConfig

BATCHNORM_MOMENTUM = 0.9  # running = m·running + (1 − m)·batch, as in flax/PyTorch defaults (PyTorch's 0.1 = 1 − m)


def _standardise(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    """(x − mean)/sqrt(var + eps) over `axes`, biased variance, in float32."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
    """Layer normalisation (Ba, Kiros & Hinton 2016, "Layer Normalization").

    y = (x − μ)/√(σ² + ε) · scale + bias, with μ, σ² the mean and (biased) variance over the last axis.
    Works on any rank (qk_norm applies it per head over d_k)."""

    AXES: tuple[int, ...] = (-1,)  # the axes the statistics are taken over

    def __init__(self, d: int, eps: float, *, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32))

    def __call__(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        y_BxTxD = _standardise(x_BxTxD.astype(jnp.float32), self.AXES, self.eps)
        return (y_BxTxD * self.scale[...] + self.bias[...]).astype(x_BxTxD.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization").

    y = x / √(mean_d(x²) + ε) · scale — LayerNorm without re-centring and without bias."""

    def __init__(self, d: int, eps: float, *, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))

    def __call__(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        x = x_BxTxD.astype(jnp.float32)
        y_BxTxD = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (y_BxTxD * self.scale[...]).astype(x_BxTxD.dtype)


class ScaleNorm(nnx.Module):
    """ScaleNorm (Nguyen & Salazar 2019, "Transformers without Tears", §2.2).

    y = g · x / max(‖x‖₂, ε), one learned scalar g (``scale``) initialised at √d, so that at init a
    token has the RMS of 1 like LayerNorm's output."""

    def __init__(self, d: int, eps: float, *, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = nnx.Param(jnp.asarray(math.sqrt(d), jnp.float32))

    def __call__(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        x = x_BxTxD.astype(jnp.float32)
        norm_BxTx1 = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return (self.scale[...] * x / jnp.maximum(norm_BxTx1, self.eps)).astype(x_BxTxD.dtype)


class GroupNorm(nnx.Module):
    """Group normalisation (Wu & He 2018, "Group Normalization"), applied per token.

    D is split into G = cfg.num_groups contiguous groups of D/G channels; each group of each token is
    standardised by its own mean and (biased) variance, then y = x̂ · scale + bias per channel.
    G = 1 is LayerNorm; G = D normalises each channel of a token alone (degenerate: output = bias)."""

    def __init__(self, d: int, eps: float, num_groups: int, *, rngs: nnx.Rngs | None = None):
        if d % num_groups:
            raise ValueError(f"groupnorm: num_groups={num_groups} must divide d={d}")
        self.eps = eps
        self.num_groups = num_groups
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32))

    def __call__(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        *lead, D = x_BxTxD.shape
        G = self.num_groups
        x_BxTxGxC = x_BxTxD.astype(jnp.float32).reshape(*lead, G, D // G)
        y_BxTxD = _standardise(x_BxTxGxC, (-1,), self.eps).reshape(*lead, D)
        return (y_BxTxD * self.scale[...] + self.bias[...]).astype(x_BxTxD.dtype)


class InstanceNorm(LayerNorm):
    """Instance normalisation (Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization").

    For each sequence b and channel d: y = (x − μ_bd)/√(σ²_bd + ε) · scale_d + bias_d, with μ_bd, σ²_bd
    the mean and biased variance over the time axis T: LayerNorm's affine standardisation over the other
    axis. It mixes positions, so it is refused with a causal mask (config.SEQUENCE_MIXING_NORMS)."""

    AXES = (-2,)


class BatchNorm(nnx.Module):
    """Batch normalisation (Ioffe & Szegedy 2015, "Batch Normalization"), over batch and time.

    train: y = (x − μ_B)/√(σ²_B + ε) · scale + bias with μ_B, σ²_B the per-channel mean and *biased*
    variance over all B×T tokens; gradients flow through μ_B and σ²_B (as in the paper), and the running
    statistics (``nnx.BatchStat`` ``mean``, ``var``) become m·running + (1 − m)·batch with m = 0.9,
    using the same biased σ²_B (flax's convention; PyTorch would store the unbiased one).
    eval: the running statistics replace μ_B, σ²_B and are left unchanged."""

    def __init__(self, d: int, eps: float, momentum: float = BATCHNORM_MOMENTUM, *,
                 rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.momentum = momentum
        self.scale = nnx.Param(jnp.ones((d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((d,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((d,), jnp.float32))

    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        x = x_BxTxD.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean_D = jnp.mean(x, axis=axes)
            var_D = jnp.mean(jnp.square(x - mean_D), axis=axes)
            m = self.momentum
            # The running averages are bookkeeping, not part of the loss: keep them out of the graph.
            self.mean[...] = m * self.mean[...] + (1.0 - m) * jax.lax.stop_gradient(mean_D)
            self.var[...] = m * self.var[...] + (1.0 - m) * jax.lax.stop_gradient(var_D)
        else:
            mean_D, var_D = self.mean[...], self.var[...]
        y_BxTxD = (x - mean_D) * jax.lax.rsqrt(var_D + self.eps)
        return (y_BxTxD * self.scale[...] + self.bias[...]).astype(x_BxTxD.dtype)


class Identity(nnx.Module):
    """No normalisation: y = x (the `none` norm; has no parameters)."""

    def __init__(self, d: int = 0, eps: float = 0.0, *, rngs: nnx.Rngs | None = None):
        pass

    def __call__(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        return x_BxTxD


NORM_LAYERS: dict[str, type] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "scalenorm": ScaleNorm,
                                 "groupnorm": GroupNorm, "instancenorm": InstanceNorm, "batchnorm": BatchNorm,
                                 "none": Identity}


def make_norm(kind: str, d: int, cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The normalisation layer `kind` (one of config.NORMS) over a last axis of size d, eps = cfg.norm_eps."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"make_norm: invalid kind {kind!r}; allowed: {', '.join(NORMS)}")
    if kind == "groupnorm":
        return GroupNorm(d, cfg.norm_eps, cfg.num_groups, rngs=rngs)
    return NORM_LAYERS[kind](d, cfg.norm_eps, rngs=rngs)
