"""How much arithmetic a preset's grid is, and the least time a device could train it in.

    python scripts/grid_cost.py --preset paper                          # this machine's device
    python scripts/grid_cost.py --preset paper --device "NVIDIA H200" --hours 3

Counts model FLOPs over every cell, seed and step of the grid (`jaxnorm.benchmarking.flops.grid_flops`:
3 × the forward pass's matmuls, the MFU convention) and divides them by the device's published dense matmul
peak (`jaxnorm.benchmarking.peaks`) in float32 (TF32 on NVIDIA GPUs) and in bfloat16. At 100% MFU that is a
bound no software beats; the other columns are the time at the MFUs given by `--mfu` (a measured MFU of this
model: scripts/bench.py), and the last the MFU the grid needs to finish within `--hours` (above 1: not on
this device). Compiling, probes,
evaluation and the optimizer are not model FLOPs, so real runs take longer still.
"""

from __future__ import annotations

import sys

from jaxnorm.benchmarking import flags
from jaxnorm.benchmarking.timing import duration


def hours_table(total_flops: float, peaks: dict[str, tuple[float | None, str]], mfus: list[float],
                hours: float) -> str:
    """One row per dtype: the peak and its source, the time at each MFU, and the MFU `hours` needs."""
    head = ["dtype", "peak FLOP/s", *(f"at {m:.0%} MFU" for m in mfus), f"MFU needed for {hours:g} h",
            "source of the peak"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for dtype, (peak, source) in peaks.items():
        if peak is None:
            lines.append(f"| {dtype} | — |" + " — |" * (len(mfus) + 1) + f" {source} |")
            continue
        needed = total_flops / (peak * hours * 3600.0)
        cells = [duration(total_flops / (peak * m)) for m in mfus]
        lines.append(f"| {dtype} | {peak:.4g} | " + " | ".join(cells) + f" | {needed:.2g} | {source} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from jaxnorm.sweep_spec import PRESETS

    parser = flags.OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)} (default paper)")
    parser.add_argument("--device", default=None,
                        help="a device kind as JAX names it, e.g. 'NVIDIA H200', or cpu (this machine's cores); "
                             "default: this machine's first device")
    parser.add_argument("--mfu", default="1,0.4,0.1", help="comma-separated MFUs in (0, 1] (default 1,0.4,0.1)")
    parser.add_argument("--hours", default="3", help="a time budget in hours > 0 (default 3)")
    args = parser.parse_args(argv)
    args.preset = flags.preset_name(parser, "--preset", args.preset)
    mfus = flags.fractions(parser, "--mfu", args.mfu)
    hours = flags.positive_float(parser, "--hours", args.hours)

    from jaxnorm.benchmarking.flops import grid_flops
    from jaxnorm.benchmarking.peaks import published_peak
    from jaxnorm.sweep_spec import expand, preset

    if args.device is None:
        import jax

        device = jax.devices()[0]
        platform, kind = device.platform, device.device_kind
    else:
        platform, kind = ("cpu", "cpu") if args.device.lower() == "cpu" else ("gpu", args.device)
    cells = expand(preset(args.preset))
    total = grid_flops(cells)
    runs = sum(c.train.seeds for c in cells)
    steps = sorted({c.train.steps for c in cells})
    print(f"# `{args.preset}`: {len(cells):,} cells, {runs:,} runs of {'/'.join(map(str, steps))} steps: "
          f"{total:.3e} model FLOPs, on {kind}")
    print()
    print(hours_table(total, {d: published_peak(platform, kind, d) for d in ("float32", "bfloat16")}, mfus, hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
