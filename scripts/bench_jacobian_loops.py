"""How the Jacobian probes' loops are compiled, side by side: end-to-end scans unrolled, XLA:GPU command buffers.

    python scripts/bench_jacobian_loops.py             # depths 8,32 at the `quick` preset's width (GPU)
    python scripts/bench_jacobian_loops.py --tiny      # smoke run (depth 2, tiny width; not a measurement)

At the quick preset's size the probes are a few loops (Lanczos' scan, and in the end-to-end probe a scan over
the layers inside it) whose bodies are tens of small kernels, so on a GPU launches and loop overhead, not
arithmetic, set their time. Two remedies are compared:
- `unroll`: layers per iteration of the end-to-end scans (`probes.end_to_end_unroll` picks the default per
  backend from this comparison);
- XLA:GPU command buffers (CUDA graphs) that record whole loops: XLA records straight-line runs of kernels by
  default, and with WHILE and CONDITIONAL in `xla_gpu_enable_command_buffer` whole loops.

Timed, interleaved (median of repeats, after compile): a bare train chunk of log_every steps, compiled with
XLA's defaults and with loops captured, and one call of the Jacobian probes (ProbeConfig's defaults) per
variant in VARIANTS. An option this XLA rejects is reported, not fatal. The last column is a call in bare
train steps of the default-compiled chunk: the figure behind the probes' amortised overhead,
1 + that / probe_every. On a CPU the GPU options change nothing (a null comparison).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnorm import probes
from jaxnorm import trainer as train_lib
from jaxnorm.benchmarking.setups import NO_PROBES, bench_configs, cached_setup, parse_depths, start
from jaxnorm.benchmarking.timing import interleaved_medians
from jaxnorm.config import ProbeConfig

# XLA's default command-buffer kinds (xla/debug_options_flags.cc), then the same with loops captured.
_DEFAULT_KINDS = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
LOOPS_CAPTURED = {"xla_gpu_enable_command_buffer": _DEFAULT_KINDS + ",WHILE,CONDITIONAL"}
# (end-to-end unroll, XLA options name) of each timed Jacobian program.
VARIANTS = ((1, "XLA default"), (2, "XLA default"), (4, "XLA default"), (8, "XLA default"),
            (1, "loops captured"), (4, "loops captured"))
OPTION_SETS: dict[str, dict[str, Any]] = {"XLA default": {}, "loops captured": LOOPS_CAPTURED}
# --tiny: each code path once (an unroll, an option set) at a smoke run's cost.
TINY_VARIANTS = ((1, "XLA default"), (4, "loops captured"))


def compiled_chunk(setup, options: dict) -> tuple[Callable[[], Any], float]:
    """(a runner of one bare chunk compiled with `options`, its compile seconds); the state is threaded
    through calls because the chunk donates it."""
    chunk = setup.cached_chunk(setup.train_cfg.log_every, False)
    box = [jax.tree.map(jnp.copy, setup.state)]
    t0 = time.perf_counter()
    compiled = chunk.compile(box[0], setup.data_keys, setup.data, options=options)
    seconds = time.perf_counter() - t0

    def run():
        box[0], scalars, layers = compiled(box[0], setup.data_keys, setup.data)
        return box[0], scalars

    return run, seconds


def compiled_jacobian(setup, probe_cfg: ProbeConfig, unroll: int, options: dict) -> tuple[Callable[[], Any], float]:
    """(a runner of one Jacobian-probe call as `jaxnorm.trainer` makes it, with `unroll` and compiled with
    `options`, its compile seconds)."""
    graphdef, params, rest = setup.fns.graphdef, setup.state.params, setup.state.rest
    tokens, key = train_lib.probe_tokens(setup.data, probe_cfg), jax.random.key(0)
    program = jax.jit(jax.vmap(lambda p, r, t, k: probes.jacobian_stats(graphdef, p, r, t, k, probe_cfg, unroll),
                               in_axes=(0, 0, None, None)))
    t0 = time.perf_counter()
    compiled = program.lower(params, rest, tokens, key).compile(options or None)
    seconds = time.perf_counter() - t0
    return (lambda: compiled(params, rest, tokens, key)), seconds


def loop_rows(depths: list[int], *, tiny: bool, repeats: int, variants: tuple = VARIANTS) -> list[dict]:
    """One row per (depth, program, variant): the chunk under each of OPTION_SETS, the Jacobian call under
    each (unroll, options name) of `variants`, which must include (1, "XLA default"), the reference."""
    probe_cfg = ProbeConfig()
    rows = []
    for depth in depths:
        setup = cached_setup(*bench_configs(depth, tiny=tiny), NO_PROBES)
        n = setup.train_cfg.log_every
        makers = {(f"chunk of {n}", 1, name): functools.partial(compiled_chunk, setup, options)
                  for name, options in OPTION_SETS.items()}
        makers.update({("jacobian call", u, name): functools.partial(compiled_jacobian, setup, probe_cfg, u,
                                                                    OPTION_SETS[name]) for u, name in variants})
        runners, compile_s, failed = {}, {}, {}
        for variant, make in makers.items():
            try:
                runners[variant], compile_s[variant] = make()
            except Exception as e:  # an XLA without a GPU option: report it, time the others
                if not OPTION_SETS[variant[2]]:
                    raise  # with XLA's defaults a failure is a bug, not a missing option
                failed[variant] = str(e).splitlines()[0][:120]
        t = interleaved_medians(runners, repeats=repeats)
        bare_step = t[f"chunk of {n}", 1, "XLA default"] / n
        for variant in makers:
            program, unroll, name = variant
            row = {"depth": depth, "program": program, "unroll": unroll, "options": name}
            if variant in failed:
                row["failed"] = failed[variant]
            else:
                reference = t[program, 1, "XLA default"]
                row.update(time_ms=1e3 * t[variant], ratio=t[variant] / reference, compile_s=compile_s[variant],
                           in_bare_steps=t[variant] / bare_step / (n if program.startswith("chunk") else 1))
            rows.append(row)
    return rows


def loop_table(rows: list[dict]) -> str:
    lines = ["| depth | program | end-to-end unroll | XLA options | time ms | vs unroll 1, XLA default | compile s | "
             "in bare steps |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        unroll = r["unroll"] if r["program"] == "jacobian call" else "—"
        head = f"| {r['depth']} | {r['program']} | {unroll} | {r['options']} |"
        if "failed" in r:
            lines.append(f"{head} rejected: {r['failed']} | | | |")
        else:
            lines.append(f"{head} {r['time_ms']:.2f} | {r['ratio']:.3f} | {r['compile_s']:.1f} | "
                         f"{r['in_bare_steps']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=parse_depths, default=None, help="comma-separated (default 8,32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per program (median)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: depth 2, tiny width, few repeats")
    args = parser.parse_args(argv)
    start(args.tiny)
    depths = args.depths or ([2] if args.tiny else [8, 32])
    repeats = 2 if args.tiny else args.repeats
    print(f"# Jacobian probes' loops ({jax.devices()[0].device_kind}, jax {jax.__version__}; this backend's "
          f"default unroll {probes.end_to_end_unroll()}; probes every {ProbeConfig().probe_every} steps by default)")
    variants = TINY_VARIANTS if args.tiny else VARIANTS
    print(loop_table(loop_rows(depths, tiny=args.tiny, repeats=repeats, variants=variants)))
    print("in bare steps: time / (default-compiled chunk time / log_every); for a chunk, per step.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
