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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import (  # noqa: E402
    LAYER_FAMILIES, NO_PROBES, bench_configs, cached_setup, interleaved_medians, parse_depths,
    smoke_mode,
)

import jax  # noqa: E402

from jaxnorm.config import ProbeConfig  # noqa: E402


def probe_overheads(depths: list[int], *, tiny: bool = False, repeats: int = 10, block: str = "pre_ln",
                    families: tuple[str, ...] = LAYER_FAMILIES + ("all",), probe_every: int | None = None
                    ) -> list[dict]:
    """One row per (depth, family): times and the ratios described in the module docstring."""
    default = ProbeConfig()
    probe_every = probe_every or default.probe_every
    rows = []
    for depth in depths:
        model_cfg, optim_cfg, train_cfg = bench_configs(depth, block=block, tiny=tiny)
        n = train_cfg.log_every
        bare = cached_setup(model_cfg, optim_cfg, train_cfg, NO_PROBES)
        runners = {"bare": bare.runner(n, False)}
        for fam in families:
            cfg = NO_PROBES.replace(**({f: True for f in LAYER_FAMILIES} if fam == "all" else {fam: True}))
            runners[fam] = cached_setup(model_cfg, optim_cfg, train_cfg, cfg).runner(n, True)
        # The bare setup's parameters (the probes run outside the step), timed in turn with the chunks so a
        # change in machine load cannot skew its ratio to the bare step.
        runners["jacobian"] = bare.jacobian_runner(default)
        t = interleaved_medians(runners, repeats=repeats)
        step = t["bare"] / n
        rows.append({"depth": depth, "family": "bare", "time_ms": 1e3 * t["bare"], "unit": f"chunk of {n}",
                     "step_ratio": 1.0, "chunk_ratio": 1.0})
        for fam in families:
            rows.append({"depth": depth, "family": fam, "time_ms": 1e3 * t[fam], "unit": f"chunk of {n}",
                         "step_ratio": 1.0 + (t[fam] - t["bare"]) / step, "chunk_ratio": t[fam] / t["bare"]})
        t_jac = t["jacobian"]
        rows.append({"depth": depth, "family": f"jacobian (every {probe_every})", "time_ms": 1e3 * t_jac,
                     "unit": "call", "step_ratio": t_jac / step,
                     "chunk_ratio": 1.0 + t_jac / (probe_every * step)})
    return rows


def probe_table(rows: list[dict]) -> str:
    lines = ["| depth | probes | time ms | per | probed step / bare step | amortised ratio to bare |",
             "|---:|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['family']} | {r['time_ms']:.1f} | {r['unit']} | "
                     f"{r['step_ratio']:.2f} | {r['chunk_ratio']:.3f} |")
    return "\n".join(lines)


TABLE_NOTE = ("amortised: per-layer families = probed chunk / bare chunk (one probed step per log_every); "
              "jacobian = 1 + t_call / (probe_every × t_bare_step); for jacobian the step column is "
              "t_call / t_bare_step.")


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
    if args.tiny:
        smoke_mode()
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
