"""Where the time of a train chunk and of a Jacobian probe goes: XLA kernel time by HLO op kind.

    python scripts/profile_step.py                    # pre_ln depth 16 at the `quick` preset's width; S = 1 vs 8
    python scripts/profile_step.py --depth 32 --seeds 4 --trace-dir /tmp/jaxnorm-trace --hlo-dir /tmp/jaxnorm-hlo
    python scripts/profile_step.py --out benchmarks/profile-cpu.md
    python scripts/profile_step.py --tiny             # smoke run: tiny sizes, not a measurement

Three programs are profiled with `jax.profiler.trace`, each called `--calls` times after a warm-up call: the
train chunk (log_every steps, the first recording per-layer gradient norms, as `jaxnorm.trainer` runs it) with
one seed and with S vmapped seeds, and one Jacobian-probe call (ProbeConfig's defaults) on one seed. Every
kernel the XLA runtime executes is a trace event naming its HLO op (`args.hlo_op`); the tables sum their
durations per op kind (the op name without its `.N` suffix: `dot`, `ynn_fusion`, `copy`, ...) per call;
control-flow ops (`while`, `call`, `conditional`) are left out, as their events span the kernels they run.

Reading the seeds table: if vmapping S seeds only removed per-kernel overhead, the S-seed kernel time would
stay near one seed's; if every kernel's work grows with the data it touches, it is near S times one seed's
("S-seed / (S x 1-seed)" near 1) and vmapping can save only the gaps between kernels. On a CPU the kernels of
one program may run on several threads at once, so summed kernel time can exceed wall time; wall times
include the profiler's own cost.

The trace directory (--trace-dir, default a temporary one) opens in Perfetto (ui.perfetto.dev, the
*.trace.json.gz file) or TensorBoard's profile plugin; --hlo-dir also writes each program's optimised HLO.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax

from jaxnorm.benchmarking.peaks import machine_description
from jaxnorm.benchmarking.setups import GRADS_ONLY, bench_configs, cached_setup, start
from jaxnorm.benchmarking.trace_kernels import kernel_events, kernel_time_by_kind, read_trace
from jaxnorm.config import ConfigError, ProbeConfig


def profile(fn: Callable[[], Any], calls: int, trace_dir: Path) -> tuple[dict[str, tuple[float, float]], float]:
    """(kernel time by kind per call, wall seconds per call) of `calls` calls of fn inside one trace."""
    jax.block_until_ready(fn())  # compile and warm up outside the trace
    with jax.profiler.trace(str(trace_dir)):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        wall = (time.perf_counter() - t0) / calls
    return kernel_time_by_kind(kernel_events(read_trace(trace_dir)), calls), wall


def _totals(kinds: dict[str, tuple[float, float]]) -> tuple[float, float]:
    return sum(ms for ms, _ in kinds.values()), sum(n for _, n in kinds.values())


def seeds_table(one: dict, many: dict, wall_one: float, wall_many: float, S: int, top: int) -> list[str]:
    lines = [f"| op kind | 1 seed: ms/chunk | kernels | {S} seeds: ms/chunk | kernels | {S}-seed / ({S} x 1-seed) |",
             "|---|---:|---:|---:|---:|---:|"]
    order = sorted(set(one) | set(many), key=lambda k: -max(S * one.get(k, (0, 0))[0], many.get(k, (0, 0))[0]))
    for k in order[:top]:
        (a, na), (b, nb) = one.get(k, (0.0, 0.0)), many.get(k, (0.0, 0.0))
        ratio = f"{b / (S * a):.2f}" if a > 0 else "—"
        lines.append(f"| {k} | {a:.2f} | {na:.0f} | {b:.2f} | {nb:.0f} | {ratio} |")
    (ta, na), (tb, nb) = _totals(one), _totals(many)
    lines.append(f"| **all kernels** | {ta:.2f} | {na:.0f} | {tb:.2f} | {nb:.0f} | {tb / (S * ta):.2f} |")
    lines.append(f"| **wall time** | {1e3 * wall_one:.2f} | | {1e3 * wall_many:.2f} | | "
                 f"{wall_many / (S * wall_one):.2f} |")
    return lines


def kinds_table(kinds: dict, wall: float, top: int) -> list[str]:
    total, n = _totals(kinds)
    lines = ["| op kind | ms/call | kernels | share of kernel time |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {ms:.2f} | {c:.0f} | {ms / total:.1%} |" for k, (ms, c) in list(kinds.items())[:top]]
    lines.append(f"| **all kernels** | {total:.2f} | {n:.0f} | 100% |")
    lines.append(f"| **wall time** | {1e3 * wall:.2f} | | |")
    return lines


def dot_summary(hlo_text: str) -> str:
    """How many dot instructions the optimised HLO holds, and how many of them have batch dimensions."""
    dots = [line for line in hlo_text.splitlines() if re.search(r"\bdot\(", line)]
    batched = sum("lhs_batch_dims" in line for line in dots)
    return f"{len(dots)} dot instructions, {batched} with batch dimensions"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, not a measurement")
    parser.add_argument("--depth", type=int, default=16, help="model depth (default 16)")
    parser.add_argument("--block", default="pre_ln", help="block (default pre_ln)")
    parser.add_argument("--seeds", type=int, default=8, help="vmapped seeds compared with one (default 8)")
    parser.add_argument("--calls", type=int, default=5, help="profiled calls per program (default 5)")
    parser.add_argument("--top", type=int, default=12, help="op kinds listed per table (default 12)")
    parser.add_argument("--trace-dir", default=None, help="keep the profiler traces here (default: a temp dir)")
    parser.add_argument("--hlo-dir", default=None, help="write each program's optimised HLO text here")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    for name in ("depth", "seeds", "calls", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be an integer >= 1, got {getattr(args, name)}")
    start(args.tiny)
    depth, S, calls = (2, 2, 2) if args.tiny else (args.depth, args.seeds, args.calls)
    try:
        m, o, t = bench_configs(depth, block=args.block, tiny=args.tiny)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    n = t.log_every
    tmp = None if args.trace_dir else tempfile.TemporaryDirectory(prefix="jaxnorm-trace-")
    root = Path(args.trace_dir or tmp.name)

    one, many = cached_setup(m, o, t, GRADS_ONLY, seeds=1), cached_setup(m, o, t, GRADS_ONLY, seeds=S)
    k1, w1 = profile(one.runner(n, True), calls, root / "chunk-1-seed")
    kS, wS = profile(many.runner(n, True), calls, root / f"chunk-{S}-seeds")
    jac_cfg = ProbeConfig()
    kJ, wJ = profile(one.jacobian_runner(jac_cfg), calls, root / "jacobian")

    dev = jax.devices()[0]
    out = [f"# where the time goes ({dev.device_kind}{', smoke run: not a measurement' if args.tiny else ''})", "",
           machine_description(), "",
           f"Model: {args.block}, depth {depth}, D={m.d_model}, H={m.num_heads}, F={m.d_ff}, T={t.seq_len}, "
           f"B={t.batch_size}, task {t.task}, ReLU, AdamW. Kernel times from jax.profiler, {calls} calls per "
           "program after a warm-up call (`scripts/profile_step.py`).", "",
           f"## Train chunk ({n} steps): 1 seed vs {S} vmapped seeds", ""]
    out += seeds_table(k1, kS, w1, wS, S, args.top)
    out += ["", f"## One Jacobian probe call (1 seed; probe_batch {jac_cfg.probe_batch}, {jac_cfg.power_iters} "
            f"{jac_cfg.spectral_method} steps per spectral norm, hutchinson_samples {jac_cfg.hutchinson_samples})",
            ""]
    out += kinds_table(kJ, wJ, args.top)
    if args.hlo_dir:
        hlo_dir = Path(args.hlo_dir)
        hlo_dir.mkdir(parents=True, exist_ok=True)
        out += ["", "## Optimised HLO", ""]
        programs = {"chunk-1-seed": one, f"chunk-{S}-seeds": many}
        for name, setup in programs.items():
            text = setup.cached_chunk(n, True).lower(setup.state, setup.data_keys, setup.data).compile().as_text()
            (hlo_dir / f"{name}.hlo.txt").write_text(text)
            out.append(f"- {name}: {dot_summary(text)} (--hlo-dir/{name}.hlo.txt)")
    out += ["", f"Traces: {root}" if args.trace_dir else "Traces: not kept (pass --trace-dir to keep them)."]
    print("\n".join(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(out) + "\n")
        print(f"\nwrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
