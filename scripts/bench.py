"""jaxnorm's speed, in one table: train step, FLOP/s vs matmul peak, compile vs depth, vmapped seeds, probes,
and a PyTorch eager reference.

    python scripts/bench.py                                    # writes benchmarks/results-<device_kind>.md
    python scripts/bench.py --torch-python /path/to/python3.11 # interpreter with torch for the reference
    python scripts/bench.py --tiny                             # smoke run: tiny sizes, prints, writes nothing

Every ratio is measured side by side in this one run (time.perf_counter, warm-up, block_until_ready, median
of repeats). Sections:

- train step: steady-state time per step of the train chunk (log_every steps per call, first step with
  per-layer gradient norms, as `jaxnorm.train` runs it) at depths 4, 16, 64 for pre_ln and post_ln (the `quick`
  preset's width, ReLU, AdamW); torch_reference.py's eager step on the same model and data, and
  torch_time / jaxnorm_time.
- FLOP/s: FLOPs per step from XLA's `compiled.cost_analysis()['flops']` of one unrolled (scan=False) step at
  depths 1 and 2, extrapolated linearly in depth (XLA counts a scan body once, whatever its trip count), or
  6 · params · tokens where cost_analysis gives none; achieved FLOP/s over the measured float32 `jnp.dot` peak.
  Measured at the sweep's width and again at d_model 256 (`wide_configs`), the size the FLOP/s target is set at.
- compile time at depths 4, 16, 64, 128 (bench_compile.compile_times) and its ratio to depth 4.
- seeds: S vmapped seeds in one program vs S sequential runs of the one-seed program (throughput ratio).
- probe overhead (bench_probes.probe_overheads) at depths 8 and 32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import (  # noqa: E402
    NO_PROBES, bench_configs, cached_setup, compile_table, compile_times, interleaved_medians, make_setup,
    median_time, smoke_mode,
)
from bench_probes import TABLE_NOTE, probe_overheads, probe_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRADS_ONLY = NO_PROBES.replace(grads=True)  # the benchmarked step records per-layer gradient norms


def matmul_peak(n: int, repeats: int) -> float:
    """Measured float32 FLOP/s of an n×n @ n×n `jnp.dot` (2n³ FLOPs)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / median_time(lambda: dot(a, b), repeats=repeats, warmup=2)


def _flops_of(model_cfg, optim_cfg, train_cfg) -> float | None:
    setup = make_setup(model_cfg, optim_cfg, train_cfg, NO_PROBES, materialise=False)
    cost = setup.chunk(1, False).lower(*setup.abstract_args(), setup.data).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def wide_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False):
    """The FLOP/s target's size: d_model 256 (4 heads, d_ff 1024), 128 tokens × batch 16, else as bench_configs.
    At the sweep's default width (32) a step is a few hundred small matmuls and no CPU gets near its peak."""
    m, o, t = bench_configs(depth, block=block, tiny=tiny)
    if tiny:
        return m, o, t
    return (m.replace(d_model=256, num_heads=4, d_ff=1024), o,
            t.replace(seq_len=128, batch_size=16, log_every=5))


def step_flops(depth: int, block: str, tiny: bool, configs=bench_configs) -> tuple[float, str]:
    """FLOPs of one train step of one seed, and how they were obtained."""
    m, o, t = configs(depth, block=block, tiny=tiny)
    f1 = _flops_of(m.replace(depth=1, scan=False), o, t)
    f2 = _flops_of(m.replace(depth=2, scan=False), o, t)
    if f1 is not None and f2 is not None:
        return f1 + (depth - 1) * (f2 - f1), "XLA cost_analysis (unrolled L=1,2, linear in L)"
    setup = make_setup(m, o, t, NO_PROBES, materialise=False)
    n_params = sum(a.size // a.shape[0] for a in jax.tree.leaves(setup.state.params))
    return 6.0 * n_params * t.batch_size * t.seq_len, "6·params·tokens"


def train_steps(depths: list[int], blocks: list[str], tiny: bool, repeats: int,
                configs=bench_configs) -> list[dict]:
    rows = []
    for block in blocks:
        runners, cfgs = {}, {}
        for depth in depths:
            m, o, t = configs(depth, block=block, tiny=tiny)
            runners[depth] = cached_setup(m, o, t, GRADS_ONLY).runner(t.log_every, True)
            cfgs[depth] = t
        times = interleaved_medians(runners, repeats=repeats)
        for depth in depths:
            step_s = times[depth] / cfgs[depth].log_every
            flops, how = step_flops(depth, block, tiny, configs)
            rows.append({"block": block, "depth": depth, "step_s": step_s, "flops": flops, "flops_how": how})
    return rows


def seed_scaling(depth: int, seeds: list[int], tiny: bool, repeats: int) -> list[dict]:
    m, o, t = bench_configs(depth, tiny=tiny)
    n = t.log_every
    one = cached_setup(m, o, t, GRADS_ONLY, seeds=1).runner(n, True)
    runners = {}
    for S in seeds:
        runners[f"vmap{S}"] = cached_setup(m, o, t, GRADS_ONLY, seeds=S).runner(n, True)
        runners[f"seq{S}"] = (lambda S=S: [one() for _ in range(S)][-1])  # earlier outputs' state is donated
    times = interleaved_medians(runners, repeats=repeats)
    return [{"seeds": S, "depth": depth, "vmap_s": times[f"vmap{S}"], "seq_s": times[f"seq{S}"],
             "speedup": times[f"seq{S}"] / times[f"vmap{S}"]} for S in seeds]


def torch_interpreter(arg: str | None) -> str | None:
    if arg:
        return arg
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def run_torch(python: str, depths: list[int], blocks: list[str], tiny: bool, threads: int | None) -> dict | None:
    m, o, t = bench_configs(depths[0], tiny=tiny)
    cmd = [python, "-W", "ignore", str(ROOT / "scripts" / "torch_reference.py"), "--blocks", ",".join(blocks),
           "--depths", ",".join(map(str, depths)), "--d-model", str(m.d_model), "--heads", str(m.num_heads),
           "--d-ff", str(m.d_ff), "--seq-len", str(t.seq_len), "--batch", str(t.batch_size),
           "--num-symbols", str(t.num_symbols), "--lr", str(o.lr), "--warmup", str(o.warmup_steps),
           "--total-steps", str(t.steps)]
    if tiny:
        cmd += ["--steps", "3", "--repeats", "2", "--warmup-steps", "1"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        print(f"torch reference failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jaxlib
    dev = jax.devices()[0]
    return "\n".join([
        f"- date: {datetime.date.today().isoformat()}",
        f"- platform: {platform.platform()} (Python {platform.python_version()})",
        f"- CPU: {cpu}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at start",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), device kind: {dev.device_kind}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, nothing written")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/results-<device_kind>.md)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch for torch_reference.py (default: this one if it has torch)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    tiny = args.tiny
    if tiny:
        smoke_mode()
    repeats = 2 if tiny else args.repeats
    depths = [2] if tiny else [4, 16, 64]
    blocks = ["pre_ln", "post_ln"]
    m, o, t = bench_configs(1, tiny=tiny)
    dev = jax.devices()[0]

    out: list[str] = [f"# jaxnorm benchmark ({dev.device_kind}{', smoke run: not a measurement' if tiny else ''})",
                      "", machine_description(), "",
                      f"Model: D={m.d_model}, H={m.num_heads}, F={m.d_ff}, T={t.seq_len}, B={t.batch_size}, "
                      f"task {t.task}, ReLU, AdamW, 1 seed, chunk of {t.log_every} steps (first step records "
                      f"per-layer gradient norms)."]
    print("\n".join(out))

    peak = matmul_peak(256 if tiny else (2048 if dev.platform == "cpu" else 8192), repeats)
    rows = train_steps(depths, blocks, tiny, repeats)
    python = torch_interpreter(args.torch_python)
    torch_res = None
    if python is None:
        print("torch reference skipped: torch is not importable here (install the [bench] extra, or pass "
              "--torch-python PATH)")
    else:
        torch_res = run_torch(python, depths, blocks, tiny, args.torch_threads or (1 if tiny else None))
    torch_times = {(r["block"], r["depth"]): r["step_s"] for r in (torch_res or {}).get("results", [])}

    sec = ["", "## Train step", "",
           f"Matmul peak (float32 jnp.dot): {peak / 1e9:.1f} GFLOP/s. FLOPs: {rows[0]['flops_how']}. "
           + (f"PyTorch {torch_res['torch']} eager, {torch_res['threads']} thread(s)." if torch_res
              else "PyTorch reference: not run."),
           "", "| block | depth | jaxnorm ms/step | GFLOP/step | GFLOP/s | fraction of peak | torch ms/step "
           "| torch / jaxnorm |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tt = torch_times.get((r["block"], r["depth"]))
        fps = r["flops"] / r["step_s"]
        sec.append(f"| {r['block']} | {r['depth']} | {1e3 * r['step_s']:.2f} | {r['flops'] / 1e9:.4f} | "
                   f"{fps / 1e9:.2f} | {fps / peak:.3f} | {'—' if tt is None else f'{1e3 * tt:.2f}'} | "
                   f"{'—' if tt is None else f'{tt / r['step_s']:.2f}'} |")
    print("\n".join(sec))
    out += sec

    wm, _, wt = wide_configs(1, tiny=tiny)
    wide = train_steps([2] if tiny else [4, 16], ["pre_ln"], tiny, repeats, configs=wide_configs)
    sec = ["", f"## FLOP/s at d_model {wm.d_model} (pre_ln, H={wm.num_heads}, F={wm.d_ff}, T={wt.seq_len}, "
           f"B={wt.batch_size})", "",
           "| depth | ms/step | GFLOP/step | GFLOP/s | fraction of matmul peak |", "|---:|---:|---:|---:|---:|"]
    for r in wide:
        fps = r["flops"] / r["step_s"]
        sec.append(f"| {r['depth']} | {1e3 * r['step_s']:.1f} | {r['flops'] / 1e9:.3f} | {fps / 1e9:.2f} | "
                   f"{fps / peak:.3f} |")
    print("\n".join(sec))
    out += sec

    compile_depths = [1, 2] if tiny else [4, 16, 64, 128]
    sec = ["", "## Compile time vs depth (pre_ln; cold, persistent cache off)", "",
           compile_table(compile_times(compile_depths, tiny=tiny))]
    print("\n".join(sec))
    out += sec

    seed_depth, seeds = (2, [1, 2]) if tiny else (16, [1, 4, 8])
    seed_rows = seed_scaling(seed_depth, seeds, tiny, repeats)
    sec = ["", f"## Seeds: S vmapped vs S sequential runs (pre_ln, depth {seed_depth}, chunk of {t.log_every})", "",
           "| S | vmapped ms/chunk | sequential ms/chunk | throughput ratio (seq / vmap) |", "|---:|---:|---:|---:|"]
    sec += [f"| {r['seeds']} | {1e3 * r['vmap_s']:.1f} | {1e3 * r['seq_s']:.1f} | {r['speedup']:.2f} |"
            for r in seed_rows]
    print("\n".join(sec))
    out += sec

    probe_depths = [2] if tiny else [8, 32]
    families = ("grads", "all") if tiny else ("grads", "activations", "attention", "alignment", "all")
    sec = ["", "## Probe overhead (pre_ln)", "",
           probe_table(probe_overheads(probe_depths, tiny=tiny, repeats=repeats, families=families)), "", TABLE_NOTE]
    print("\n".join(sec))
    out += sec

    if not tiny:
        path = Path(args.out) if args.out else ROOT / "benchmarks" / f"results-{dev.device_kind.replace(' ', '_')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(out) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
