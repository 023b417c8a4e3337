"""Cost of each probe family, as a ratio to the bare train step, measured side by side in one run.

    python scripts/bench_probes.py                  # depths 8,32 at the `quick` preset's width
    python scripts/bench_probes.py --depths 8 --repeats 20
    python scripts/bench_probes.py --tiny           # smoke run (depth 2, tiny width; not a measurement)

Per-layer families (grads, activations, attention, alignment, and all four together) run inside the train
chunk's first step, exactly as `jaxnorm.trainer` does: for each, a chunk of log_every steps whose first step is
probed is timed against the same chunk with no probed step (steady state, after compile, median of repeats,
the chunks interleaved). Reported: `probed step / bare step` = 1 + (t_probed_chunk − t_bare_chunk) / t_bare_step,
and `chunk ratio` = t_probed_chunk / t_bare_chunk (the cost as training pays it, once per log_every steps).

Jacobian probes run outside the step, every probe_every steps (ProbeConfig's default unless --probe-every):
`jacobian_stats_seeds` is timed in turn with the chunks and reported as t_jacobian / (probe_every × t_bare_step),
its amortised overhead per step, and as t_jacobian / t_bare_step (the cost of one call, in bare steps).
"""

from __future__ import annotations

import argparse
import sys

import jax

from jaxnorm.benchmarking.probe_cost import TABLE_NOTE, probe_overheads, probe_table
from jaxnorm.benchmarking.setups import LAYER_FAMILIES, bench_configs, parse_depths, start
from jaxnorm.config import ProbeConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=parse_depths, default=None, help="comma-separated (default 8,32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per program (median)")
    parser.add_argument("--block", default="pre_ln")
    parser.add_argument("--probe-every", type=int, default=None,
                        help=f"Jacobian period (default ProbeConfig's, {ProbeConfig().probe_every})")
    parser.add_argument("--tiny", action="store_true", help="smoke run: depth 2, tiny width, few repeats")
    args = parser.parse_args(argv)
    families = LAYER_FAMILIES + ("all",)
    start(args.tiny)
    if args.tiny:
        families = ("grads", "all")  # every code path (one family, all families) at a smoke run's cost
    depths = args.depths or ([2] if args.tiny else [8, 32])
    repeats = 2 if args.tiny else args.repeats
    model_cfg, _, train_cfg = bench_configs(1, tiny=args.tiny)
    print(f"# probe overhead ({args.block}; D={model_cfg.d_model}, T={train_cfg.seq_len}, B={train_cfg.batch_size}, "
          f"log_every={train_cfg.log_every}; {jax.devices()[0].device_kind})")
    print(probe_table(probe_overheads(depths, tiny=args.tiny, repeats=repeats, block=args.block,
                                      families=families, probe_every=args.probe_every)))
    print(TABLE_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
