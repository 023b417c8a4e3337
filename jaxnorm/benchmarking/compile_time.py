"""Compile time against depth: the scan over stacked blocks should keep it flat.

For each depth, `lower` and `compile` of (a) the train chunk the training loop runs (one probed step and
log_every − 1 bare steps, vmapped over seeds) and (b) the model's forward + backward alone (`jit(grad(loss))`),
each a fresh program after `jax.clear_caches()`: a cold trace, lower and XLA compile.
"""

from __future__ import annotations

import statistics
from typing import Callable

import jax

from jaxnorm import model as model_lib
from jaxnorm.benchmarking.setups import Setup, bench_configs, make_setup
from jaxnorm.benchmarking.timing import cold_compile
from jaxnorm.config import ProbeConfig
from jaxnorm.step import cross_entropy


def fwd_bwd_fn(setup: Setup) -> Callable:
    """jit(grad) of the training loss of one model (no optimizer, no probes, no vmap)."""
    graphdef, z_loss = setup.fns.graphdef, setup.train_cfg.z_loss

    def loss(params, rest, batch):
        logits, _, _ = model_lib.apply(graphdef, params, rest, batch["inputs"], train=True)
        return cross_entropy(logits, batch, z_loss)[0]

    return jax.jit(jax.grad(loss))


def compile_times(depths: list[int], *, tiny: bool = False, repeats: int = 1, block: str = "pre_ln"
                  ) -> list[dict[str, float]]:
    """Per depth: median over `repeats` cold compiles of the train chunk and of forward+backward alone."""
    rows = []
    for depth in depths:
        model_cfg, optim_cfg, train_cfg = bench_configs(depth, block=block, tiny=tiny)
        setup = make_setup(model_cfg, optim_cfg, train_cfg, ProbeConfig(), materialise=False)
        params1, rest1 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                      (setup.state.params, setup.state.rest))
        batch = jax.eval_shape(lambda k: setup.data.batch(k, train_cfg.batch_size), jax.random.key(0))
        chunk_args = setup.abstract_args() + (setup.data,)
        chunk = [cold_compile(lambda: setup.chunk(train_cfg.log_every, True), *chunk_args) for _ in range(repeats)]
        fb = [cold_compile(lambda: fwd_bwd_fn(setup), params1, rest1, batch) for _ in range(repeats)]
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        rows.append({"depth": depth, "chunk_lower_s": med(chunk, 0), "chunk_compile_s": med(chunk, 1),
                     "fb_lower_s": med(fb, 0), "fb_compile_s": med(fb, 1)})
    for r in rows:
        r["chunk_total_s"] = r["chunk_lower_s"] + r["chunk_compile_s"]
        r["fb_total_s"] = r["fb_lower_s"] + r["fb_compile_s"]
        r["chunk_ratio"] = r["chunk_total_s"] / rows[0]["chunk_total_s"]
        r["fb_ratio"] = r["fb_total_s"] / rows[0]["fb_total_s"]
    return rows


def compile_table(rows: list[dict[str, float]]) -> str:
    d0 = rows[0]["depth"]
    lines = [f"| depth | chunk lower s | chunk compile s | chunk total s | ratio to L={d0} "
             f"| fwd+bwd lower s | fwd+bwd compile s | fwd+bwd total s | ratio to L={d0} |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['chunk_lower_s']:.2f} | {r['chunk_compile_s']:.2f} | "
                     f"{r['chunk_total_s']:.2f} | {r['chunk_ratio']:.2f} | {r['fb_lower_s']:.2f} | "
                     f"{r['fb_compile_s']:.2f} | {r['fb_total_s']:.2f} | {r['fb_ratio']:.2f} |")
    return "\n".join(lines)
