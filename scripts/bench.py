"""jaxnorm's speed, in one table: train step, FLOP/s vs matmul peak, compile vs depth, vmapped seeds, probes,
and a PyTorch eager reference.

    python scripts/bench.py                                    # writes benchmarks/results-<device_kind>.md
    python scripts/bench.py --torch-python /path/to/python3.11 # interpreter with torch for the reference
    python scripts/bench.py --tiny                             # smoke run: tiny sizes, prints, writes nothing
    python scripts/bench.py --sections train,wide              # some sections only

Every ratio is measured side by side in this one run (time.perf_counter, warm-up, block_until_ready, median
of repeats). Sections:

- train step (`train`): steady-state time per step of the train chunk (log_every steps per call, first step
  with per-layer gradient norms, as `jaxnorm.trainer` runs it) at depths 4, 16, 64 for pre_ln and post_ln (the
  `quick` preset's width, ReLU, AdamW); torch_reference.py's eager step on the same model and data (on the GPU
  when JAX's backend is one), and torch_time / jaxnorm_time.
- FLOP/s (`wide`): model FLOPs per step (`model_flops`, the MFU convention) over the measured time, as a
  fraction of the measured `jnp.dot` peak (MFU); beside them XLA's `cost_analysis` count (`xla_step_flops`).
  Measured at the sweep's width and at d_model 256 (`wide_configs`), the size the CPU target is set at; on a
  GPU/TPU also at d_model 1024 (`large_configs`) with float32 and with bfloat16 matmuls, each against the
  peak of its own dtype.
- compile time (`compile`) at depths 4, 16, 64, 128 (bench_compile.compile_times) and its ratio to depth 4.
- seeds (`seeds`): S vmapped seeds in one program, on one device and split over the local devices (on a CPU,
  `--cpu-devices` of them), vs S sequential runs of the one-seed program (throughput).
- probe overhead (`probes`, bench_probes.probe_overheads) at depths 8 and 32.

The results file is rewritten after every section, so a run that is cut short keeps the tables it finished.
"""

from __future__ import annotations

import argparse
import datetime
import functools
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

from jaxnorm import sharding  # noqa: E402
from jaxnorm.data import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRADS_ONLY = NO_PROBES.replace(grads=True)  # the benchmarked step records per-layer gradient norms


def matmul_peak(n: int, repeats: int, dtype: str = "float32") -> float:
    """Measured FLOP/s of an n×n @ n×n `jnp.dot` (2n³ FLOPs) in `dtype`, at JAX's default precision (the one
    the model's matmuls run at: on recent NVIDIA GPUs float32 dots may use TF32 tensor cores)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / median_time(lambda: dot(a, b), repeats=repeats, warmup=2)


def model_flops(model_cfg, train_cfg) -> float:
    """Model FLOPs of one train step of one seed, the MFU convention (Chowdhery et al. 2022, "PaLM", App. B):
    3 × the forward pass's matmul FLOPs (the backward pass costs twice the forward), counting per token and
    layer 2·4D² for the Q, K, V, O projections, 2·2·D·F for the MLP and 2·2·T·D for attention scores and
    values over the full T×T (as computed, causal or not), plus 2·D·V for the head. Elementwise work, norms,
    probes and the optimizer are not model FLOPs."""
    D, F, L = model_cfg.d_model, model_cfg.d_ff, model_cfg.depth
    T, B = train_cfg.seq_len, train_cfg.batch_size
    V = make_dataset(train_cfg).vocab_size
    per_token = L * (8 * D * D + 4 * D * F + 4 * T * D) + 2 * D * V
    return 3.0 * per_token * B * T


def _xla_flops_of(model_cfg, optim_cfg, train_cfg) -> float | None:
    setup = make_setup(model_cfg, optim_cfg, train_cfg, NO_PROBES, materialise=False)
    cost = setup.chunk(1, False).lower(*setup.abstract_args(), setup.data).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


@functools.lru_cache(maxsize=None)
def _xla_flops_depth_1_2(block: str, tiny: bool, configs) -> tuple[float | None, float | None]:
    """Unrolled depth-1 and depth-2 step FLOPs: shared by every depth of a block (two compiles, not 2 per depth)."""
    m, o, t = configs(1, block=block, tiny=tiny)
    return _xla_flops_of(m.replace(depth=1, scan=False), o, t), _xla_flops_of(m.replace(depth=2, scan=False), o, t)


def xla_step_flops(depth: int, block: str, tiny: bool, configs=bench_configs) -> float | None:
    """XLA's own count for one train step (`compiled.cost_analysis()['flops']` of unrolled depth-1 and depth-2
    steps, linear in depth: XLA counts a scan body once whatever its trip count). Everything it compiles is
    in it, but on a GPU it leaves out the matmuls XLA hands to cuBLAS, so it is shown beside the model
    FLOPs, never used for MFU."""
    f1, f2 = _xla_flops_depth_1_2(block, tiny, configs)
    return None if f1 is None or f2 is None else f1 + (depth - 1) * (f2 - f1)


def wide_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False):
    """The FLOP/s target's size: d_model 256 (4 heads, d_ff 1024), 128 tokens × batch 16, else as bench_configs.
    At the sweep's default width (32) a step is a few hundred small matmuls and no CPU gets near its peak."""
    m, o, t = bench_configs(depth, block=block, tiny=tiny)
    if tiny:
        return m, o, t
    return (m.replace(d_model=256, num_heads=4, d_ff=1024), o,
            t.replace(seq_len=128, batch_size=16, log_every=5))


def large_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False, dtype: str = "float32"):
    """An accelerator-sized model for its MFU: d_model 1024 (16 heads, d_ff 4096), 512 tokens × batch 32, matmuls
    in `dtype`. d_model 256 leaves a GPU's tensor cores mostly idle, so its fraction says little about the chip."""
    m, o, t = bench_configs(depth, block=block, tiny=tiny)
    if tiny:
        return m.replace(dtype=dtype), o, t
    return (m.replace(d_model=1024, num_heads=16, d_ff=4096, dtype=dtype), o,
            t.replace(seq_len=512, batch_size=32, num_symbols=64, log_every=5))


def large_bf16_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False):
    return large_configs(depth, block=block, tiny=tiny, dtype="bfloat16")


def train_steps(depths: list[int], blocks: list[str], tiny: bool, repeats: int,
                configs=bench_configs, side_by_side: bool = True) -> list[dict]:
    """Per block and depth: seconds per train step and FLOP counts. side_by_side=False measures one depth at a
    time and frees it before the next (an accelerator-sized model's activations need most of a GPU's memory;
    two of them at once ran out of memory on an 80 GB H100)."""
    rows = []
    for block in blocks:
        runners, cfgs, times = {}, {}, {}
        for depth in depths:
            m, o, t = configs(depth, block=block, tiny=tiny)
            cfgs[depth] = t
            if side_by_side:
                runners[depth] = cached_setup(m, o, t, GRADS_ONLY).runner(t.log_every, True)
            else:
                times[depth] = median_time(make_setup(m, o, t, GRADS_ONLY).runner(t.log_every, True),
                                           repeats=repeats)
        if runners:
            times.update(interleaved_medians(runners, repeats=repeats))
        for depth in depths:
            m, _, t = configs(depth, block=block, tiny=tiny)
            rows.append({"block": block, "depth": depth, "step_s": times[depth] / cfgs[depth].log_every,
                         "flops": model_flops(m, t), "xla_flops": xla_step_flops(depth, block, tiny, configs)})
    return rows


def seed_scaling(depth: int, seeds: list[int], tiny: bool, repeats: int) -> list[dict]:
    """Per S: the S-seed program on one device, the same with its seeds split over the local devices (when
    they divide S: several CPU devices, `--cpu-devices`), and S sequential calls of the one-seed program."""
    m, o, t = bench_configs(depth, tiny=tiny)
    n = t.log_every
    one = cached_setup(m, o, t, GRADS_ONLY, seeds=1).runner(n, True)
    runners, split_devices = {}, {}
    for S in seeds:
        setup = cached_setup(m, o, t, GRADS_ONLY, seeds=S)
        runners[f"vmap{S}"] = setup.runner(n, True)
        mesh = sharding.train_mesh(S)
        if mesh is not None and mesh.shape[sharding.SEED_AXIS] > 1 and mesh.shape[sharding.DATA_AXIS] == 1:
            runners[f"split{S}"] = setup.runner(n, True, mesh)
            split_devices[S] = mesh.shape[sharding.SEED_AXIS]
        runners[f"seq{S}"] = (lambda S=S: [one() for _ in range(S)][-1])  # earlier outputs' state is donated
    times = interleaved_medians(runners, repeats=repeats)
    rows = []
    for S in seeds:
        split_s = times.get(f"split{S}")
        rows.append({"seeds": S, "depth": depth, "vmap_s": times[f"vmap{S}"], "seq_s": times[f"seq{S}"],
                     "speedup": times[f"seq{S}"] / times[f"vmap{S}"], "split_s": split_s,
                     "split_devices": split_devices.get(S),
                     "split_speedup": times[f"seq{S}"] / split_s if split_s else None})
    return rows


def torch_interpreter(arg: str | None) -> str | None:
    if arg:
        return arg
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def run_torch(python: str, depths: list[int], blocks: list[str], tiny: bool, threads: int | None,
              device: str = "cpu") -> dict | None:
    m, o, t = bench_configs(depths[0], tiny=tiny)
    cmd = [python, "-W", "ignore", str(ROOT / "scripts" / "torch_reference.py"), "--blocks", ",".join(blocks),
           "--depths", ",".join(map(str, depths)), "--d-model", str(m.d_model), "--heads", str(m.num_heads),
           "--d-ff", str(m.d_ff), "--seq-len", str(t.seq_len), "--batch", str(t.batch_size),
           "--num-symbols", str(t.num_symbols), "--lr", str(o.lr), "--warmup", str(o.warmup_steps),
           "--total-steps", str(t.steps), "--device", device]
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


SECTIONS = ("train", "wide", "compile", "seeds", "probes")
FLOPS_NOTE = ("FLOP/s and MFU use model FLOPs (`model_flops`: 3 × the forward pass's matmul FLOPs); XLA's own "
              "cost_analysis count is shown beside them (on a GPU it leaves out the matmuls run by cuBLAS).")


def flops_cells(row: dict, peak: float) -> str:
    """'model GFLOP | XLA GFLOP | GFLOP/s | MFU' table cells of one measured row."""
    fps = row["flops"] / row["step_s"]
    xla = "—" if row["xla_flops"] is None else giga(row["xla_flops"])
    return f"{giga(row['flops'])} | {xla} | {giga(fps)} | {fps / peak:.3g}"


def giga(x: float) -> str:
    """x / 1e9 with 4 significant digits, without exponents."""
    g = x / 1e9
    return f"{g:.4g}" if abs(g) < 1e4 else f"{g:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, nothing written")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/results-<device_kind>.md)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch for torch_reference.py (default: this one if it has torch)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="JAX CPU devices for the seeds section's split runs (default: the largest divisor of "
                             "8 up to the core count; no effect on a GPU/TPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, in this order (allowed: {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    sections = [x for x in args.sections.split(",") if x]
    bad = [x for x in sections if x not in SECTIONS]
    if bad or not sections:
        parser.error(f"--sections: invalid value {args.sections!r}; allowed: comma-separated {', '.join(SECTIONS)}")
    tiny = args.tiny
    if tiny:
        smoke_mode()
    sharding.set_cpu_devices(args.cpu_devices or sharding.auto_cpu_devices(2 if tiny else 8))
    repeats = 2 if tiny else args.repeats
    depths = [2] if tiny else [4, 16, 64]
    blocks = ["pre_ln", "post_ln"]
    m, o, t = bench_configs(1, tiny=tiny)
    dev = jax.devices()[0]
    accelerator = dev.platform != "cpu"
    path = None if tiny else (
        Path(args.out) if args.out else ROOT / "benchmarks" / f"results-{dev.device_kind.replace(' ', '_')}.md")

    out: list[str] = [f"# jaxnorm benchmark ({dev.device_kind}{', smoke run: not a measurement' if tiny else ''})",
                      "", machine_description(), "",
                      f"Model: D={m.d_model}, H={m.num_heads}, F={m.d_ff}, T={t.seq_len}, B={t.batch_size}, "
                      f"task {t.task}, ReLU, AdamW, 1 seed, chunk of {t.log_every} steps (first step records "
                      f"per-layer gradient norms)."]

    def emit(lines: list[str]) -> None:
        """Print a section and rewrite the results file with everything so far: a run cut short keeps its tables."""
        print("\n".join(lines), flush=True)
        out.extend(lines)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text("\n".join(out) + "\n")
            os.replace(tmp, path)

    print("\n".join(out))
    peak_n = 256 if tiny else (8192 if accelerator else 2048)
    peak = matmul_peak(peak_n, repeats)
    peak_bf16 = matmul_peak(peak_n, repeats, "bfloat16") if accelerator or tiny else None

    if "train" in sections:
        rows = train_steps(depths, blocks, tiny, repeats)
        python = torch_interpreter(args.torch_python)
        torch_res = None
        if python is None:
            print("torch reference skipped: torch is not importable here (install the [bench] extra, or pass "
                  "--torch-python PATH)")
        else:
            torch_device = "cuda" if dev.platform == "gpu" else "cpu"
            torch_res = run_torch(python, depths, blocks, tiny, args.torch_threads or (1 if tiny else None),
                                  torch_device)
        torch_times = {(r["block"], r["depth"]): r["step_s"] for r in (torch_res or {}).get("results", [])}
        where = (f"on {torch_res.get('device', 'cpu')}" if torch_res and torch_res.get("device", "cpu") != "cpu"
                 else f"{torch_res['threads']} thread(s)" if torch_res else "")
        sec = ["", "## Train step", "",
               f"Matmul peak (float32 jnp.dot, {peak_n}²): {peak / 1e9:.1f} GFLOP/s. {FLOPS_NOTE} "
               + (f"PyTorch {torch_res['torch']} eager, {where}." if torch_res else "PyTorch reference: not run."),
               "", "| block | depth | jaxnorm ms/step | model GFLOP/step | XLA GFLOP/step | GFLOP/s "
               "| fraction of peak (MFU) | torch ms/step | torch / jaxnorm |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            tt = torch_times.get((r["block"], r["depth"]))
            sec.append(f"| {r['block']} | {r['depth']} | {1e3 * r['step_s']:.2f} | {flops_cells(r, peak)} | "
                       f"{'—' if tt is None else f'{1e3 * tt:.2f}'} | "
                       f"{'—' if tt is None else f'{tt / r['step_s']:.2f}'} |")
        emit(sec)

    if "wide" in sections:
        # (matmul dtype, its peak, configs, depths timed side by side): an accelerator-sized model's depths are
        # timed one at a time, as two of them at once need more memory than an 80 GB GPU has.
        size_rows = [("float32", peak, wide_configs, True)]
        if accelerator or tiny:  # MFU of an accelerator-sized model, float32 and bf16 matmuls against their peaks
            size_rows += [("float32", peak, large_configs, False), ("bfloat16", peak_bf16, large_bf16_configs, False)]
        peaks = f"float32 {peak / 1e9:.1f} GFLOP/s" + (
            f", bfloat16 {peak_bf16 / 1e9:.1f} GFLOP/s" if peak_bf16 else "")
        sec = ["", f"## FLOP/s vs measured matmul peak ({peaks}; pre_ln)", "", FLOPS_NOTE, "",
               "| d_model | H | F | T | B | matmul dtype | depth | ms/step | model GFLOP/step | XLA GFLOP/step "
               "| GFLOP/s | fraction of matmul peak (MFU) |", "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for dtype, dpeak, configs, side_by_side in size_rows:
            wm, _, wt = configs(1, tiny=tiny)
            for r in train_steps([2] if tiny else [4, 16], ["pre_ln"], tiny, repeats, configs=configs,
                                 side_by_side=side_by_side):
                sec.append(f"| {wm.d_model} | {wm.num_heads} | {wm.d_ff} | {wt.seq_len} | {wt.batch_size} | {dtype} "
                           f"| {r['depth']} | {1e3 * r['step_s']:.2f} | {flops_cells(r, dpeak)} |")
        emit(sec)

    if "compile" in sections:
        compile_depths = [1, 2] if tiny else [4, 16, 64, 128]
        emit(["", "## Compile time vs depth (pre_ln; cold, persistent cache off)", "",
              compile_table(compile_times(compile_depths, tiny=tiny))])

    if "seeds" in sections:
        seed_depth, seeds = (2, [1, 2]) if tiny else (16, [1, 4, 8])
        seed_rows = seed_scaling(seed_depth, seeds, tiny, repeats)
        ms = lambda x: "—" if x is None else f"{1e3 * x:.1f}"  # noqa: E731
        ratio = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
        n_dev = jax.device_count()
        sec = ["", f"## Seeds: S vmapped vs S sequential runs (pre_ln, depth {seed_depth}, chunk of {t.log_every})",
               "", f"One device: the S-seed program on device 0. Split: the same program with its seeds split over "
               f"the {n_dev} local device(s) as `jaxnorm.trainer` runs it (`jaxnorm/sharding.py`; on a CPU "
               f"`--cpu-devices`, default the largest divisor of 8 up to the core count). Sequential: S calls of "
               f"the one-seed program on device 0.", "",
               "| S | vmapped, one device ms/chunk | vmapped, seeds split ms/chunk | split over devices "
               "| sequential ms/chunk | throughput ratio seq / one device | throughput ratio seq / split |",
               "|---:|---:|---:|---:|---:|---:|---:|"]
        sec += [f"| {r['seeds']} | {ms(r['vmap_s'])} | {ms(r['split_s'])} | {r['split_devices'] or '—'} "
                f"| {ms(r['seq_s'])} | {ratio(r['speedup'])} | {ratio(r['split_speedup'])} |" for r in seed_rows]
        emit(sec)

    if "probes" in sections:
        probe_depths = [2] if tiny else [8, 32]
        # an accelerator's compiles are slower and its lease short: the cheapest and the costliest family there
        families = ("grads", "all") if tiny or accelerator else ("grads", "activations", "attention", "alignment",
                                                                  "all")
        emit(["", "## Probe overhead (pre_ln)", "",
              probe_table(probe_overheads(probe_depths, tiny=tiny, repeats=repeats, families=families)), "",
              TABLE_NOTE])

    if path is not None:
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
