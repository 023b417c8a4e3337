"""jaxnorm's speed, in one table: train step against PyTorch, FLOP/s vs matmul peaks, compile vs depth, vmapped
seeds, probes, and a whole sweep against PyTorch training the same grid.

    python scripts/bench.py                                    # writes benchmarks/results-<device_kind>.md
    python scripts/bench.py --torch-python /path/to/python     # interpreter with torch for the reference
    python scripts/bench.py --tiny                             # smoke run: tiny sizes, prints, writes nothing
    python scripts/bench.py --sections train,wide              # some sections only
    python scripts/bench.py --sections e2e --e2e-depths 2 --e2e-steps 20   # the end-to-end row, reduced

Every ratio is measured side by side in this one run (time.perf_counter, warm-up, block_until_ready, median
of repeats, the compared programs in turn, repeat by repeat). Sections:

- train step (`train`): steady-state time per step of the train chunk (log_every steps per call, first step
  with per-layer gradient norms, as `jaxnorm.trainer` runs it) at depths 4, 16, 64 for pre_ln and post_ln (the
  `quick` preset's width, ReLU, AdamW), and the PyTorch reference on the same model and data (on the GPU when
  JAX's backend is one) in its best forms (`--torch-variants`): eager with AdamW(fused=True) where torch
  supports it, and the model under torch.compile. PyTorch runs in a worker process (scripts/torch_serve.py),
  its repeats in turn with jaxnorm's, so both see the same machine load; torch_time / jaxnorm_time.
- FLOP/s (`wide`): model FLOPs per step (`model_flops`, the MFU convention) over the measured time, as a
  fraction of the `jnp.dot` peak measured in this run and of the device's published peak (for a CPU, one
  derived from /proc/cpuinfo; its source is printed); beside them XLA's `cost_analysis` count. Measured at
  the sweep's width and at d_model 256 (`wide_configs`), the size the CPU target is set at; on a GPU/TPU also
  at d_model 1024 (`large_configs`) with float32 and with bfloat16 matmuls, each against its dtype's peaks.
- compile time (`compile`) at depths 4, 16, 64, 128 and its ratio to depth 4.
- seeds (`seeds`): S vmapped seeds in one program, on one device and split over the local devices (on a CPU,
  `--cpu-devices` of them), vs S sequential runs of the one-seed program (throughput).
- probe overhead (`probes`) at depths 8 and 32.
- end to end (`e2e`): the `quick` preset's grid (or a reduced one: `--e2e-*`) as whole processes, from start
  to exit: `python -m experiments.depth_sweep` cold (an empty XLA cache) and warm (the same cache, a fresh
  --out), and scripts/torch_train_grid.py training every cell and seed in turn (jaxnorm.benchmarking.end_to_end).

The results file is rewritten after every section, so a run that is cut short keeps the tables it finished.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import jax

from jaxnorm import sharding
from jaxnorm.benchmarking import flags
from jaxnorm.benchmarking.compile_time import compile_table, compile_times
from jaxnorm.benchmarking.end_to_end import TORCH_BLOCKS, Grid, end_to_end, quick_grid
from jaxnorm.benchmarking.flops import matmul_peak, model_flops
from jaxnorm.benchmarking.peaks import machine_description, published_peak
from jaxnorm.benchmarking.probe_cost import TABLE_NOTE, probe_overheads, probe_table
from jaxnorm.benchmarking.setups import GRADS_ONLY, NO_PROBES, bench_configs, cached_setup, make_setup, start
from jaxnorm.benchmarking.timing import interleaved_medians, interleaved_timer_medians, median_time, wall_timer
from jaxnorm.benchmarking.torch_peer import VARIANTS, TorchPeer, model_flags, torch_interpreter

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "wide", "compile", "seeds", "probes", "e2e")
FLOPS_NOTE = ("FLOP/s and MFU use model FLOPs (`model_flops`: 3 × the forward pass's matmul FLOPs); XLA's own "
              "cost_analysis count is shown beside them (on a GPU it leaves out the matmuls run by cuBLAS).")
TORCH_LABELS = {"eager": "torch eager", "compile": "torch.compile"}


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


def train_steps(depths: list[int], blocks: list[str], tiny: bool, repeats: int, configs=bench_configs,
                side_by_side: bool = True, peer: TorchPeer | None = None, variants: tuple[str, ...] = ()
                ) -> tuple[list[dict], dict]:
    """Per block and depth: seconds per train step, FLOP counts and, with a PyTorch `peer`, its seconds per step
    in each of `variants`, timed in turn with jaxnorm's chunks. Also what PyTorch ran: {"optimizer": AdamW's
    form, "failed": {variant: why it did not run}, "prepare_s": {variant: [seconds to build and warm up (for
    torch.compile: to compile) each model]}}.
    side_by_side=False measures one depth at a time and frees it before the next (an accelerator-sized model's
    activations need most of a GPU's memory; two of them at once ran out of memory on an 80 GB H100)."""
    rows, torch_info = [], {"optimizer": None, "failed": {}, "prepare_s": {}}
    for block in blocks:
        timers, times, prepared, threads = {}, {}, [], {}
        for depth in depths:
            m, o, t = configs(depth, block=block, tiny=tiny)
            if side_by_side:
                timers["jax", depth] = wall_timer(cached_setup(m, o, t, GRADS_ONLY).runner(t.log_every, True))
            else:
                times["jax", depth] = median_time(make_setup(m, o, t, GRADS_ONLY).runner(t.log_every, True),
                                                  repeats=repeats)
            for variant in variants if peer else ():
                key = f"{block}-{depth}-{variant}"
                reply = peer.prepare(key, block, depth, variant, warmup_steps=1 if tiny else 3)
                if reply["ok"]:
                    timers[variant, depth] = peer.timer(key, t.log_every)
                    threads[variant, depth] = reply["threads"]
                    prepared.append(key)
                    torch_info["optimizer"] = reply["optimizer"]
                    torch_info["prepare_s"].setdefault(variant, []).append(reply["prepare_s"])
                else:
                    torch_info["failed"][variant] = reply["reason"]
        times.update(interleaved_timer_medians(timers, repeats=repeats))
        for key in prepared:
            peer.drop(key)
        for depth in depths:
            m, _, t = configs(depth, block=block, tiny=tiny)
            torch_s = {v: times[v, depth] / t.log_every for v in variants if (v, depth) in times}
            rows.append({"block": block, "depth": depth, "step_s": times["jax", depth] / t.log_every,
                         "flops": model_flops(m, t), "xla_flops": xla_step_flops(depth, block, tiny, configs),
                         "torch_s": torch_s, "torch_threads": {v: threads[v, depth] for v in torch_s}})
    return rows, torch_info


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


def giga(x: float) -> str:
    """x / 1e9 with 4 significant digits, without exponents."""
    g = x / 1e9
    return f"{g:.4g}" if abs(g) < 1e4 else f"{g:.0f}"


def flops_cells(row: dict, peak: float, published: float | None) -> str:
    """'model GFLOP | XLA GFLOP | GFLOP/s | MFU measured | MFU published' table cells of one measured row."""
    fps = row["flops"] / row["step_s"]
    xla = "—" if row["xla_flops"] is None else giga(row["xla_flops"])
    return f"{giga(row['flops'])} | {xla} | {giga(fps)} | {fps / peak:.3g} | " + (
        "—" if published is None else f"{fps / published:.3g}")


def peak_line(dtype: str, n: int, peak: float, published: tuple[float | None, str]) -> str:
    value, source = published
    pub = f"{value / 1e9:.1f} GFLOP/s, {source}" if value else source
    return f"Matmul peak, {dtype}: measured {peak / 1e9:.1f} GFLOP/s (jnp.dot, {n}²); published {pub}."


def train_section(rows: list[dict], torch_info: dict, variants: tuple[str, ...], torch_about: dict | None,
                  torch_skip: str, peaks: str, peak: float, published: float | None, log_every: int) -> list[str]:
    if torch_about:
        where = (f"on {torch_about['device']}" if torch_about["device"] != "cpu" else
                 f"intra-op threads per model: {torch_about['threads']}" + (
                     f" (torch's default {torch_about['default_threads']} where at least 10% faster than 1 in the "
                     "model's warm-up, else 1: last column)" if torch_about["threads"] == "auto" else ""))
        forms = "; ".join(f"{TORCH_LABELS[v]}" + (f" (not run: {torch_info['failed'][v]})" if v in torch_info["failed"]
                                                  else "") for v in variants)
        torch_note = (f"PyTorch {torch_about['torch']}, {where}, {torch_info['optimizer'] or 'AdamW'}: {forms}. "
                      f"It runs in a worker process (scripts/torch_serve.py) whose repeats of {log_every} steps "
                      "alternate with jaxnorm's chunks.")
        compiled = torch_info["prepare_s"].get("compile")
        if compiled:
            torch_note += (f" torch.compile's warm-up (compiling, then the first steps) took "
                           f"{min(compiled):.0f}–{max(compiled):.0f} s per model.")
    else:
        torch_note = f"PyTorch reference: not run ({torch_skip})."
    head = ("| block | depth | jaxnorm ms/step | model GFLOP/step | XLA GFLOP/step | GFLOP/s | MFU (measured peak) "
            "| MFU (published peak) |" + "".join(f" {TORCH_LABELS[v]} ms/step | {TORCH_LABELS[v]} / jaxnorm |"
                                                 for v in variants)
            + (f" torch threads ({'/'.join(variants)}) |" if variants else ""))
    lines = ["", "## Train step", "", f"{peaks} {FLOPS_NOTE} {torch_note}", "", head,
             "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(variants) + ("---:|" if variants else "")]
    for r in rows:
        cells = "".join(f" {1e3 * r['torch_s'][v]:.2f} | {r['torch_s'][v] / r['step_s']:.2f} |"
                        if v in r["torch_s"] else " — | — |" for v in variants)
        if variants:
            cells += " " + "/".join(str(r["torch_threads"].get(v, "—")) for v in variants) + " |"
        lines.append(f"| {r['block']} | {r['depth']} | {1e3 * r['step_s']:.2f} | "
                     f"{flops_cells(r, peak, published)} |{cells}")
    return lines


def e2e_section(grid: Grid, reduced: str, res: dict, torch_skip: str, repeats: int) -> list[str]:
    torch, torch_skip = res["torch"], res["torch_error"] or torch_skip
    base = res["torch_s"]
    ratio = lambda s: "—" if base is None else f"{base / s:.2f}"  # noqa: E731
    if torch:
        chosen = sorted({c["threads"] for c in torch["cells"]})
        threads = (f"threads chosen per cell: {'/'.join(map(str, chosen))}" if torch["threads"] == "auto"
                   else f"{torch['threads']} thread(s)")
        torch_row = (f"| PyTorch {torch['torch']} eager ({torch['optimizer']}; {threads}), every cell and seed in "
                     f"turn | {base:.1f} | 1.00 |")
    else:
        torch_row = f"| PyTorch: not run ({torch_skip}) | — | — |"
    lines = ["", f"## End to end: {'a reduced' if reduced else 'the'} `quick` preset grid, whole processes", "",
             f"Grid: {grid.describe()}{f' ({reduced})' if reduced else ''}. Wall seconds from start "
             f"to exit, median of {repeats} round(s), each round cold, PyTorch, warm in turn. jaxnorm: "
             "`python -m experiments.depth_sweep` (trains every cell's seeds together, runs its probes and "
             "evaluations, writes every file, figures and report.md); PyTorch: scripts/torch_train_grid.py (the "
             "same model, task, optimizer, schedule and steps; evaluations as the sweep's; no probes, no files).",
             "", "| run | wall s | PyTorch / this |", "|---|---:|---:|", torch_row,
             f"| jaxnorm sweep, cold (empty JAXNORM_XLA_CACHE, fresh --out) | {res['cold_s']:.1f} | "
             f"{ratio(res['cold_s'])} |",
             f"| jaxnorm sweep, warm (the same cache again, fresh --out) | {res['warm_s']:.1f} | "
             f"{ratio(res['warm_s'])} |",
             "", "Final held-out loss, mean over seeds (the same training; each side draws its own batches):", "",
             "| block | depth | jaxnorm | PyTorch |", "|---|---:|---:|---:|"]
    for (block, depth), loss in sorted(res["losses_jax"].items()):
        theirs = res["losses_torch"].get((block, depth))
        lines.append(f"| {block} | {depth} | {loss:.4f} | {'—' if theirs is None else f'{theirs:.4f}'} |")
    return lines


def parse_args(argv: list[str] | None):
    parser = flags.OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, nothing written")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/results-<device_kind>.md)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch for the PyTorch reference (default: this one if it has torch)")
    parser.add_argument("--torch-threads", default="auto", help="PyTorch's intra-op threads: an integer >= 1, or "
                        "auto (per model on a CPU: torch's default where at least 10%% faster than 1 thread in "
                        "warm-up, else 1; the default)")
    parser.add_argument("--torch-variants", default=",".join(VARIANTS),
                        help=f"PyTorch rows of the train section, comma-separated from {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", default="10", help="timed repeats per measurement (median)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="JAX CPU devices for the seeds section's split runs (default: the divisor of 8 nearest "
                             "the core count, up to twice it; no effect on a GPU/TPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, in this order (allowed: {', '.join(SECTIONS)})")
    quick = quick_grid()
    parser.add_argument("--e2e-blocks", default=None, help=f"end-to-end grid's blocks, comma-separated from "
                        f"{', '.join(TORCH_BLOCKS)} (default the quick preset's: {','.join(quick.blocks)})")
    parser.add_argument("--e2e-depths", default=None, help="end-to-end grid's depths, comma-separated (default "
                        f"the quick preset's: {','.join(map(str, quick.depths))})")
    parser.add_argument("--e2e-seeds", default=None, help=f"seeds per cell (default {quick.seeds})")
    parser.add_argument("--e2e-steps", default=None, help=f"steps per cell (default {quick.steps})")
    parser.add_argument("--e2e-repeats", default="1", help="rounds of the three end-to-end runs (median; default 1)")
    args = parser.parse_args(argv)
    args.sections = flags.names(parser, "--sections", args.sections, SECTIONS)
    args.torch_variants = flags.names(parser, "--torch-variants", args.torch_variants, VARIANTS)
    args.repeats = 2 if args.tiny else flags.positive_int(parser, "--repeats", args.repeats)
    if args.torch_threads != "auto" and not (args.torch_threads.isdigit() and int(args.torch_threads) >= 1):
        parser.error(f"--torch-threads: invalid value {args.torch_threads!r}; allowed: auto or an integer >= 1")
    args.e2e_repeats = flags.positive_int(parser, "--e2e-repeats", args.e2e_repeats)
    small = Grid(("pre_ln",), (2,), 1, 4, tiny=True) if args.tiny else quick  # --tiny: a smoke run's grid
    given = {"--e2e-blocks": args.e2e_blocks, "--e2e-depths": args.e2e_depths, "--e2e-seeds": args.e2e_seeds,
             "--e2e-steps": args.e2e_steps}
    args.grid = Grid(
        flags.names(parser, "--e2e-blocks", args.e2e_blocks, TORCH_BLOCKS) if args.e2e_blocks else small.blocks,
        flags.positive_ints(parser, "--e2e-depths", args.e2e_depths) if args.e2e_depths else small.depths,
        flags.positive_int(parser, "--e2e-seeds", args.e2e_seeds) if args.e2e_seeds else small.seeds,
        flags.positive_int(parser, "--e2e-steps", args.e2e_steps) if args.e2e_steps else small.steps, args.tiny)
    args.grid_reduced = ("reduced by " + ", ".join(f for f, v in given.items() if v is not None)
                         if any(v is not None for v in given.values()) else "a smoke run's grid" if args.tiny else "")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections, tiny, repeats = args.sections, args.tiny, args.repeats
    start(tiny)
    sharding.set_cpu_devices(args.cpu_devices or sharding.auto_cpu_devices(2 if tiny else 8))
    depths = [2] if tiny else [4, 16, 64]
    blocks = ["pre_ln", "post_ln"]
    m, o, t = bench_configs(1, tiny=tiny)
    dev = jax.devices()[0]
    accelerator = dev.platform != "cpu"
    path = None if tiny else (
        Path(args.out) if args.out else ROOT / "benchmarks" / f"results-{dev.device_kind.replace(' ', '_')}.md")
    python, torch_skip = torch_interpreter(args.torch_python)

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
    published = published_peak(dev.platform, dev.device_kind, "float32")
    published_bf16 = published_peak(dev.platform, dev.device_kind, "bfloat16")
    peaks = peak_line("float32", peak_n, peak, published)

    if "train" in sections:
        torch_device = ["--device", "cuda" if dev.platform == "gpu" else "cpu"]
        threads = ["--threads", args.torch_threads]
        peer, train_skip = (TorchPeer.start(python, model_flags(m, o, t) + torch_device + threads) if python
                            else (None, torch_skip))
        if peer is None:
            rows, torch_info = train_steps(depths, blocks, tiny, repeats)
            about = None
        else:
            with peer:
                rows, torch_info = train_steps(depths, blocks, tiny, repeats, peer=peer,
                                               variants=args.torch_variants)
                about = peer.about
        variants = args.torch_variants if about else ()
        emit(train_section(rows, torch_info, variants, about, train_skip, peaks, peak, published[0], t.log_every))

    if "wide" in sections:
        # (matmul dtype, its peaks, configs, depths timed side by side): an accelerator-sized model's depths are
        # timed one at a time, as two of them at once need more memory than an 80 GB GPU has.
        size_rows = [("float32", peak, published[0], wide_configs, True)]
        lines = [peaks]
        if accelerator or tiny:  # MFU of an accelerator-sized model, float32 and bf16 matmuls against their peaks
            size_rows += [("float32", peak, published[0], large_configs, False),
                          ("bfloat16", peak_bf16, published_bf16[0], large_bf16_configs, False)]
            lines.append(peak_line("bfloat16", peak_n, peak_bf16, published_bf16))
        sec = ["", "## FLOP/s vs matmul peaks (pre_ln)", "", " ".join(lines), "", FLOPS_NOTE, "",
               "| d_model | H | F | T | B | matmul dtype | depth | ms/step | model GFLOP/step | XLA GFLOP/step "
               "| GFLOP/s | MFU (measured peak) | MFU (published peak) |",
               "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for dtype, dpeak, dpub, configs, side_by_side in size_rows:
            wm, _, wt = configs(1, tiny=tiny)
            rows, _ = train_steps([2] if tiny else [4, 16], ["pre_ln"], tiny, repeats, configs=configs,
                                  side_by_side=side_by_side)
            for r in rows:
                sec.append(f"| {wm.d_model} | {wm.num_heads} | {wm.d_ff} | {wt.seq_len} | {wt.batch_size} | {dtype} "
                           f"| {r['depth']} | {1e3 * r['step_s']:.2f} | {flops_cells(r, dpeak, dpub)} |")
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
               f"`--cpu-devices`, default the divisor of 8 nearest the core count, up to twice it). Sequential: S calls of "
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

    if "e2e" in sections:
        res = end_to_end(args.grid, python, repeats=args.e2e_repeats, threads=args.torch_threads)
        emit(e2e_section(args.grid, args.grid_reduced, res, torch_skip, args.e2e_repeats))

    if path is not None:
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
