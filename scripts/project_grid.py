"""How long a preset's whole grid would take on this machine, projected from a sample of it run here.

    python scripts/project_grid.py --preset paper                       # 2 model structures, 200 steps each
    python scripts/project_grid.py --preset paper --structures 4 --steps 100 --out runs/paper-sample

A model structure is every cell that shares one set of compiled programs: all depths, learning rates,
clippings and seeds of one block, norm, attention and optimizer (jaxnorm.packing). The script picks
`--structures` of them spread evenly over the grid and runs each as a sweep of its own with `--steps` steps
instead of the preset's, cold (an empty compilation cache) and on the devices the sweep's command uses (on a
CPU one per seed, as `--cpu-devices auto`). Per structure it keeps the sweep's own time split (compiling,
running, writing) and adds what the longer runs would cost: each pack's training loop after its first chunk
(`run_s` in its cells' summary.json) scaled from the sample's steps to the preset's. The mean over the
sample times the grid's number of structures is the projection (checked against a whole preset's run:
benchmarks/presets.md).

What it leaves out: the whole sweep compiles the next structure while one trains (here each structure's
compiling is counted in full, an overestimate where compiling dominates), the Jacobian probes and
evaluations recur with the steps as they do in the sample's loop (at the preset's intervals, fewer in a
short sample), and structures differ in cost (blocks, optimizers), which the sample averages over. Compare
scripts/grid_cost.py, the bound that the arithmetic alone sets.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from jaxnorm.benchmarking import flags
from jaxnorm.benchmarking.timing import duration
from jaxnorm.config import ConfigError


def structures(cells: list[Any]) -> list[list[Any]]:
    """`cells` grouped by model structure (equal `packing.pack_key` with depth shared), in grid order."""
    from jaxnorm import packing

    groups: dict[Any, list[Any]] = {}
    for c in cells:
        groups.setdefault(packing.pack_key(c.model, c.optim, c.train, c.probe, share_depth=True), []).append(c)
    return list(groups.values())


def spread(n: int, k: int) -> list[int]:
    """`k` indices out of range(n), evenly spaced, the first one 0 (all of them when k >= n)."""
    k = min(k, n)
    return sorted({round(i * n / k) for i in range(k)})


def structure_spec(spec: Any, cells: list[Any]) -> Any:
    """`spec` narrowed to exactly `cells` (one structure): each axis keeps the values those cells have."""
    from jaxnorm import axes
    from jaxnorm.sweep_spec import expand

    narrowed = spec.replace(**{a.field: tuple(dict.fromkeys(c.axes()[a.name] for c in cells))
                               for a in axes.axes()})
    if sorted(c.cell_id for c in expand(narrowed)) != sorted(c.cell_id for c in cells):
        raise ValueError("structure_spec: the axes' values do not pick out exactly one structure's cells")
    return narrowed


def loop_extra(summaries: list[dict], seeds: int, sample_steps: int, steps: int, chunk: int) -> float:
    """Seconds the cells' training loops would add at `steps` instead of `sample_steps`: each pack's loop after
    its first chunk of `chunk` steps (the timing `run_s` its cells' summaries share; a cell's part is its
    share of the pack's runs) scaled by the ratio of the steps after that chunk."""
    ratio = (steps - chunk) / (sample_steps - chunk)
    return sum(s["timing"]["run_s"] * seeds / s["timing"]["runs_packed"] * (ratio - 1.0) for s in summaries)


def project(samples: list[dict[str, float]], n_structures: int) -> dict[str, float]:
    """The whole grid's seconds: the mean over the sampled structures of each part ({compiling, running,
    writing}, running with the longer loops' `extra` added) times `n_structures`."""
    mean = lambda f: sum(f(s) for s in samples) / len(samples) * n_structures  # noqa: E731
    parts = {"compiling": mean(lambda s: s["compiling"]), "running": mean(lambda s: s["running"] + s["extra"]),
             "writing": mean(lambda s: s["writing"])}
    return {**parts, "total": sum(parts.values())}


def main(argv: list[str] | None = None) -> int:
    from jaxnorm.sweep_spec import PRESETS

    parser = flags.OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)} (default paper)")
    parser.add_argument("--structures", default="2", help="model structures to run, an integer >= 1 (default 2)")
    parser.add_argument("--steps", default="200", help="steps per cell in the sample: more than the preset's "
                                                       "log_every and fewer than its steps (default 200)")
    parser.add_argument("--out", default=None, help="keep the sample's run directories here (default: a "
                                                    "temporary directory, removed at the end)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: the preset at a tiny width, depths 2 and 4")
    args = parser.parse_args(argv)
    args.preset = flags.preset_name(parser, "--preset", args.preset)
    k = flags.positive_int(parser, "--structures", args.structures)
    sample_steps = flags.positive_int(parser, "--steps", args.steps)

    with tempfile.TemporaryDirectory(prefix="jaxnorm-project-") as scratch:
        # Cold: an empty persistent compilation cache, set before JAX reads it.
        os.environ["JAXNORM_XLA_CACHE"] = str(Path(scratch) / "xla-cache")
        out = Path(args.out) if args.out else Path(scratch) / "runs"
        try:
            return _run(args.preset, k, sample_steps, out, args.tiny)
        except ConfigError as e:  # e.g. the sample does not fit in this machine's memory
            print(f"error: {e}", file=sys.stderr)
            return 2


def _run(name: str, k: int, sample_steps: int, out: Path, tiny: bool) -> int:
    from jaxnorm import budget, integrity, sharding, sweep
    from jaxnorm.benchmarking.peaks import machine_description
    from jaxnorm.sweep_spec import expand, preset

    spec = preset(name)
    # As `python -m experiments.depth_sweep` does by default (--cpu-devices auto): on a CPU, a device per seed.
    sharding.set_cpu_devices(sharding.auto_cpu_devices(spec.seeds))
    if tiny:
        spec = spec.replace(depths=(2, 4), model=spec.model.replace(d_model=16, num_heads=2, d_ff=32),
                            train=spec.train.replace(batch_size=4, seq_len=8))
    steps, chunk = spec.train.steps, min(spec.train.log_every, spec.train.steps)
    if steps and not chunk < sample_steps < steps:
        raise ConfigError(f"--steps: invalid value {sample_steps}; allowed: more than the `{name}` preset's "
                          f"first chunk ({chunk} steps, its log_every) and fewer than its {steps} steps")
    cells = expand(spec)
    budget.check_memory(cells)  # a grid with a cell this machine cannot hold has no time here to project
    groups = structures(cells)
    picked = spread(len(groups), k)
    print(f"# `{name}` projected from {len(picked)} of its {len(groups)} model structures at "
          f"{sample_steps if steps else 0} of its {steps} steps{' (tiny)' if tiny else ''}")
    print()
    print(machine_description())
    print()
    print("| structure | cells | compiling s | running s | writing s | the full loops add s |")
    print("|---|---:|---:|---:|---:|---:|")
    samples = []
    for i in picked:
        group = groups[i]
        sample = structure_spec(spec, group)
        sample = sample.replace(train=sample.train.replace(steps=sample_steps if steps else 0))
        run_dir = out / f"structure-{i}"
        seconds = dict(sweep.run(sample, run_dir, progress=False).attrs["time_s"])
        summaries = [integrity.read_summary(run_dir / "cells" / c.cell_id)
                     for c in expand(sample)]  # the sample's ids: its steps are part of them
        seconds["extra"] = loop_extra(summaries, spec.seeds, sample_steps, steps, chunk) if steps else 0.0
        samples.append(seconds)
        c = group[0]
        print(f"| {c.block}, {c.norm}, {c.attention}, {c.optimizer} | {len(group)} | {seconds['compiling']:.1f} | "
              f"{seconds['running']:.1f} | {seconds['writing']:.1f} | {seconds['extra']:.1f} |", flush=True)
    whole = project(samples, len(groups))
    print()
    print(f"Projected for all {len(groups)} structures ({sum(map(len, groups)):,} cells) on this machine: "
          f"compiling {duration(whole['compiling'])}, running {duration(whole['running'])}, writing "
          f"{duration(whole['writing'])}: **{duration(whole['total'])}**")
    return 0


if __name__ == "__main__":
    sys.exit(main())
