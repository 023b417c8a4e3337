"""Compile time versus depth: the scan over stacked blocks keeps it flat.

    python scripts/bench_compile.py                       # depths 4,16,64,128 at the `quick` preset's width
    python scripts/bench_compile.py --depths 4,128 --repeats 3
    python scripts/bench_compile.py --tiny                # smoke run: depth 2 at a tiny width

For each depth, at one width, it times `lower` and `compile` of (a) the jitted train chunk that the training
loop runs (`make_chunk(...)`: one probed step + log_every−1 bare steps, vmapped over seeds) and (b) the model's
forward + backward alone (`jit(grad(loss))`). Every measurement uses a fresh `jax.jit` object, after
`jax.clear_caches()`, with the persistent compilation cache off, so each one is a cold trace + lower + XLA
compile. The table gives each time and its ratio to the smallest depth: with `lax.scan` over the layer axis
the ratio at depth 128 / depth 4 should be ≈ 1 (an unrolled Python loop would grow ~linearly).

A second table splits what one block of `--preset init` compiles (steps = 0, every program runs once, so
compiling is nearly all of it; the cells of every depth share these programs, padded to the largest depth)
into its four programs: init, the probed measurement step, eval and the Jacobian probes.

This module also holds the helpers that scripts/bench_probes.py and scripts/bench.py share (configs at the
benchmark width, a ready-to-run `Setup`, the timer).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from jaxnorm import model as model_lib  # noqa: E402
from jaxnorm import probes, programs, sharding  # noqa: E402
from jaxnorm import trainer as train_lib  # noqa: E402
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig  # noqa: E402
from jaxnorm.data import make_dataset  # noqa: E402
from jaxnorm.padding import padded_config  # noqa: E402
from jaxnorm.step import StepFns, build_step_fns, cross_entropy, make_chunk  # noqa: E402
from jaxnorm.sweep_spec import preset  # noqa: E402
from jaxnorm.trainer import resolve_config  # noqa: E402

# A cold compile per measurement: no on-disk cache may answer for XLA.
jax.config.update("jax_enable_compilation_cache", False)

# --- shared configuration --------------------------------------------------------------------------------

# Probe families that the train chunk's first step computes (per-layer, inside the step).
LAYER_FAMILIES = ("grads", "activations", "attention", "alignment")
NO_PROBES = ProbeConfig(grads=False, activations=False, attention=False, jacobian=False, alignment=False)


def bench_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False
                  ) -> tuple[ModelConfig, OptimConfig, TrainConfig]:
    """The `quick` preset's model and training shape at `depth` (ReLU, AdamW); `tiny` shrinks it for smoke runs."""
    spec = preset("quick")
    model_cfg = spec.model.replace(depth=depth, block=block, activation="relu", scan=True)
    optim_cfg = spec.optim.replace(optimizer="adamw", lr=3e-3)
    train_cfg = spec.train.replace(progress=False, seeds=1)
    if tiny:
        model_cfg = model_cfg.replace(d_model=16, num_heads=2, d_ff=32)
        train_cfg = train_cfg.replace(batch_size=4, seq_len=8, log_every=4)
    return model_cfg, optim_cfg, train_cfg


@dataclasses.dataclass
class Setup:
    """Everything needed to call a train chunk: step functions, data, a batch sampler and S initialised seeds."""

    fns: StepFns
    data: Any
    batch_fn: Callable
    state: Any
    data_keys: jax.Array
    model_cfg: ModelConfig
    optim_cfg: OptimConfig
    train_cfg: TrainConfig
    probe_cfg: ProbeConfig

    chunks: dict = dataclasses.field(default_factory=dict)

    def chunk(self, n_steps: int, with_probes: bool) -> Callable:
        """A fresh jitted chunk of n_steps (donates its state argument: always feed back the returned state)."""
        return make_chunk(self.fns, self.batch_fn, n_steps, with_probes)

    def cached_chunk(self, n_steps: int, with_probes: bool) -> Callable:
        """The same chunk, built once per Setup, so benchmark sections that run one program compile it once."""
        if (n_steps, with_probes) not in self.chunks:
            self.chunks[n_steps, with_probes] = self.chunk(n_steps, with_probes)
        return self.chunks[n_steps, with_probes]

    def runner(self, n_steps: int, with_probes: bool, mesh: Mesh | None = None) -> Callable[[], Any]:
        """A no-argument callable running the chunk on its own copy of the state (threaded through calls).
        With a mesh (`sharding.train_mesh`): the chunk `jaxnorm.trainer` compiles for it, the state and keys
        split over it."""
        if mesh is None:
            chunk = self.cached_chunk(n_steps, with_probes)
        else:
            chunk = train_lib._program("chunk", self.fns, self.data, self.train_cfg.batch_size, mesh, n_steps,
                                       with_probes)
        box = [sharding.shard_seeds(jax.tree.map(jnp.copy, self.state), mesh)]
        keys = sharding.shard_seeds(self.data_keys, mesh)

        def run():
            box[0], scalars, layers = chunk(box[0], keys, self.data)
            return box[0], scalars, layers

        return run

    def abstract_args(self) -> tuple:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (self.state, self.data_keys))

    def jacobian_runner(self, probe_cfg: ProbeConfig) -> Callable[[], Any]:
        """A no-argument callable: the Jacobian probes of this setup's parameters, as `jaxnorm.trainer` calls them
        (its probe batch, `probe_cfg`'s sizes)."""
        return functools.partial(probes.jacobian_stats_seeds, self.fns.graphdef, self.state.params, self.state.rest,
                                 train_lib.probe_tokens(self.data, probe_cfg), jax.random.key(0), probe_cfg)


def make_setup(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig,
               probe_cfg: ProbeConfig, *, seeds: int = 1, materialise: bool = True) -> Setup:
    """Build the step functions the way `jaxnorm.trainer` does and initialise `seeds` seeds (vmapped).
    With materialise=False the state is only its shapes (enough to lower and compile)."""
    data = make_dataset(train_cfg)
    model_cfg = resolve_config(model_cfg, train_cfg, data)
    fns = build_step_fns(model_cfg, optim_cfg.replace(lr=1.0), train_cfg.replace(seeds=1), probe_cfg)
    keys = jnp.stack([jax.random.key(s) for s in range(seeds)])
    init_keys, data_keys = jax.vmap(jax.random.split)(keys).swapaxes(0, 1)
    init = jax.vmap(fns.init_state, in_axes=(0, None))
    lr = jnp.float32(optim_cfg.lr)
    state = jax.jit(init)(init_keys, lr) if materialise else jax.eval_shape(init, init_keys, lr)
    B = train_cfg.batch_size
    return Setup(fns, data, lambda d, k: d.batch(k, B), state, data_keys, model_cfg, optim_cfg, train_cfg,
                 probe_cfg)


_SETUPS: dict[tuple, Setup] = {}


def cached_setup(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig, probe_cfg: ProbeConfig,
                 *, seeds: int = 1) -> Setup:
    """make_setup, memoised on its arguments (for timing sections that share programs, never for compile timing)."""
    key = (model_cfg, optim_cfg, train_cfg, probe_cfg, seeds)
    if key not in _SETUPS:
        _SETUPS[key] = make_setup(model_cfg, optim_cfg, train_cfg, probe_cfg, seeds=seeds)
    return _SETUPS[key]


def smoke_mode() -> None:
    """--tiny: XLA's backend optimisation off (compiles several times faster). Smoke runs check that the
    script works end to end; their numbers are not measurements. Must run before JAX starts its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


# --- timing ----------------------------------------------------------------------------------------------

def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() (its result blocked on) over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each callable, measured side by side: every repeat runs each callable once, in turn,
    so a change in machine load hits all of them alike. The first `warmup` calls (compile) are not timed."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cold_compile(make_jitted: Callable[[], Any], *args: Any) -> tuple[float, float]:
    """(lower_s, compile_s) of a freshly made jitted function on abstract args, with JAX's caches cleared."""
    jax.clear_caches()
    jitted = make_jitted()
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


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


def init_cell_compile_times(depth: int, *, block: str = "pre_ln", tiny: bool = False) -> list[dict]:
    """Cold lower and compile seconds of each program a block of `--preset init` (steps = 0) compiles, built
    the way `jaxnorm.trainer` builds them (its program cache and one-shot compiler options, the stack padded to
    `depth`, jaxnorm.padding): where the compile time that every depth of one block shares goes (measured:
    benchmarks/presets.md)."""
    spec = preset("init")
    model_cfg, train_cfg, probe_cfg = spec.model.replace(depth=depth, block=block), spec.train, spec.probe
    if tiny:
        model_cfg = model_cfg.replace(d_model=16, num_heads=2, d_ff=32)
        train_cfg = train_cfg.replace(batch_size=4, seq_len=8)
    data = make_dataset(train_cfg)
    model_cfg = padded_config(resolve_config(model_cfg, train_cfg, data), depth)
    fns = build_step_fns(model_cfg, spec.optim.replace(lr=1.0), train_cfg.replace(seeds=1), probe_cfg)
    S, B = train_cfg.seeds, train_cfg.batch_size
    init_keys = jnp.stack([jax.random.key(s) for s in range(S)])
    lr, active = jnp.float32(spec.optim.lr), jnp.int32(depth)
    options = tuple(sorted((train_lib.one_shot_options(True) or {}).items()))

    def fresh(kind: str, *args: Any) -> Callable[[], Any]:
        def make():  # the caches emptied, so the program is traced, lowered and compiled anew
            programs.clear()
            if kind == "jacobian":
                return probes._jacobian_stats_program(fns.graphdef, probe_cfg, options, probes.end_to_end_unroll())
            return train_lib._program(kind, fns, data, B, sharding.train_mesh(S), *args, once=True)
        return make

    state = jax.eval_shape(fresh("init")(), init_keys, lr, active)
    tokens = train_lib.probe_tokens(data, probe_cfg)
    to_time = {
        "init": (fresh("init"), (init_keys, lr, active)),
        "measure (probed step, no update)": (fresh("measure"), (state, init_keys, data)),
        "eval": (fresh("eval", train_cfg.eval_batches, train_cfg.z_loss),
                 (state.params, state.rest, jax.random.key(0), data)),
        "jacobian probes": (fresh("jacobian"), (state.params, state.rest, tokens, jax.random.key(0))),
    }
    rows = []
    for name, (make, args) in to_time.items():
        lower_s, compile_s = cold_compile(make, *args)
        rows.append({"program": name, "lower_s": lower_s, "compile_s": compile_s})
    return rows


def init_cell_table(rows: list[dict]) -> str:
    lines = ["| program | lower s | compile s | total s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['program']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | {r['lower_s'] + r['compile_s']:.2f} |"
              for r in rows]
    lower, comp = sum(r["lower_s"] for r in rows), sum(r["compile_s"] for r in rows)
    lines.append(f"| **all** | {lower:.2f} | {comp:.2f} | {lower + comp:.2f} |")
    return "\n".join(lines)


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


def describe_width(tiny: bool) -> str:
    m, _, t = bench_configs(1, tiny=tiny)
    return (f"D={m.d_model}, H={m.num_heads}, F={m.d_ff}, T={t.seq_len}, B={t.batch_size}, task={t.task}, "
            f"chunk={t.log_every} steps, {jax.devices()[0].device_kind}")


def parse_depths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=parse_depths, default=None, help="comma-separated (default 4,16,64,128)")
    parser.add_argument("--repeats", type=int, default=1, help="cold compiles per measurement (median)")
    parser.add_argument("--block", default="pre_ln")
    parser.add_argument("--tiny", action="store_true", help="smoke run: depth 2 at a tiny width")
    args = parser.parse_args(argv)
    if args.tiny:
        smoke_mode()
    depths = args.depths or ([2] if args.tiny else [4, 16, 64, 128])
    print(f"# compile time vs depth ({args.block}; {describe_width(args.tiny)})")
    print(compile_table(compile_times(depths, tiny=args.tiny, repeats=args.repeats, block=args.block)))
    init_depth = 2 if args.tiny else 16
    print(f"\n# programs of one `--preset init` block ({args.block}, padded to depth {init_depth}; cold, "
          "one-shot options)")
    print(init_cell_table(init_cell_compile_times(init_depth, block=args.block, tiny=args.tiny)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
