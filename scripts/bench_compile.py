"""Compile time versus depth: the scan over stacked blocks keeps it flat.

    python scripts/bench_compile.py                       # depths 4,16,64,128 at the `quick` preset's width
    python scripts/bench_compile.py --depths 4,128 --repeats 3
    python scripts/bench_compile.py --tiny                # smoke run: depth 2 at a tiny width

For each depth, at one width, it times `lower` and `compile` of (a) the jitted train chunk that the training
loop runs (the trainer's chunk: one probed step + log_every−1 bare steps, vmapped over seeds) and (b) the model's
forward + backward alone (`jit(grad(loss))`). Every measurement uses a fresh `jax.jit` object, after
`jax.clear_caches()`, with the persistent compilation cache off, so each one is a cold trace + lower + XLA
compile. The table gives each time and its ratio to the smallest depth: with `lax.scan` over the layer axis
the ratio at depth 128 / depth 4 should be ≈ 1 (an unrolled Python loop would grow ~linearly).

A second table splits what one block of `--preset init` compiles (steps = 0, every program runs once, so
compiling is nearly all of it; the cells of every depth share these programs, padded to the largest depth)
into its four programs: init, the train chunk (with steps = 0, its probed step with the update off: the
measurement), eval and the Jacobian probes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnorm import probes, programs, sharding
from jaxnorm import trainer as train_lib
from jaxnorm.benchmarking.compile_time import compile_table, compile_times
from jaxnorm.benchmarking.setups import describe_width, parse_depths, seed_hparams, start, trainer_program
from jaxnorm.benchmarking.timing import cold_compile
from jaxnorm.data import make_dataset
from jaxnorm.padding import padded_config
from jaxnorm.step import build_step_fns
from jaxnorm.sweep_spec import preset
from jaxnorm.trainer import resolve_config


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
    keys = jnp.stack([jax.random.key(s) for s in range(S)])
    hparams = seed_hparams(spec.optim, S)
    options = tuple(sorted((train_lib.compiler_options(True) or {}).items()))

    def fresh(kind: str, *args: Any) -> Callable[[], Any]:
        def make():  # the caches emptied, so the program is traced, lowered and compiled anew
            if kind == "jacobian":
                programs.clear()
                return probes._jacobian_stats_program(fns.graphdef, probe_cfg, options, probes.end_to_end_unroll())
            return trainer_program(kind, fns, data, B, *args, mesh=sharding.train_mesh(S), once=True, fresh=True,
                                   active_depth=depth)
        return make

    state = fresh("init")().eval_shape(keys, hparams)
    tokens = train_lib.probe_tokens(data, probe_cfg)
    to_time = {  # with steps = 0 the train chunk is one probed step with the update off: the measurement
        "init": (fresh("init"), (keys, hparams)),
        "measure (the chunk's probed step, update off)": (fresh("measure", 1, train_lib.probe_cfg_any(probe_cfg)),
                                                          (state, keys, data)),
        "eval": (fresh("eval", train_cfg.eval_batches, train_cfg.z_loss), (state.params, state.rest, keys, data)),
        "jacobian probes": (fresh("jacobian"), (state.params, state.rest, tokens, jax.random.key(0), jnp.int32(depth))),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=parse_depths, default=None, help="comma-separated (default 4,16,64,128)")
    parser.add_argument("--repeats", type=int, default=1, help="cold compiles per measurement (median)")
    parser.add_argument("--block", default="pre_ln")
    parser.add_argument("--tiny", action="store_true", help="smoke run: depth 2 at a tiny width")
    args = parser.parse_args(argv)
    start(args.tiny)
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
