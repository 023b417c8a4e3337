"""FLOPs of a train step by the MFU convention, and the measured matmul peak they are held against."""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp

from jaxnorm.benchmarking.timing import median_time
from jaxnorm.config import ModelConfig, TrainConfig
from jaxnorm.data import make_dataset


def model_flops(model_cfg: ModelConfig, train_cfg: TrainConfig) -> float:
    """Model FLOPs of one train step of one seed, the MFU convention (Chowdhery et al. 2022, "PaLM", App. B):
    3 × the forward pass's matmul FLOPs (the backward pass costs twice the forward), counting per token and
    layer 2·4D² for the Q, K, V, O projections, 2·2·D·F for the MLP and 2·2·T·D for attention scores and
    values over the full T×T (as computed, causal or not), plus 2·D·V for the head. Elementwise work, norms,
    probes and the optimizer are not model FLOPs."""
    return _step_flops(model_cfg, train_cfg, make_dataset(train_cfg).vocab_size)


def _step_flops(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int) -> float:
    D, F, L = model_cfg.d_model, model_cfg.d_ff, model_cfg.depth
    T, B = train_cfg.seq_len, train_cfg.batch_size
    per_token = L * (8 * D * D + 4 * D * F + 4 * T * D) + 2 * D * vocab_size
    return 3.0 * per_token * B * T


def grid_flops(cells: Iterable[Any]) -> float:
    """Model FLOPs of a whole grid (the cells of `jaxnorm.sweep_spec.expand`): `model_flops` × steps × seeds
    summed over its cells; a steps = 0 cell counts its one measured step."""
    vocab: dict[TrainConfig, int] = {}  # one dataset per task setting, not one per cell
    total = 0.0
    for cell in cells:
        if cell.train not in vocab:
            vocab[cell.train] = make_dataset(cell.train).vocab_size
        total += _step_flops(cell.model, cell.train, vocab[cell.train]) * max(cell.train.steps, 1) * cell.train.seeds
    return total


def matmul_peak(n: int, repeats: int, dtype: str = "float32") -> float:
    """Measured FLOP/s of an n×n @ n×n `jnp.dot` (2n³ FLOPs) in `dtype`, at JAX's default precision (the one
    the model's matmuls run at: on recent NVIDIA GPUs float32 dots may use TF32 tensor cores)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / median_time(lambda: dot(a, b), repeats=repeats, warmup=2)
