"""Reproduce published effects on deep Transformers at small scale: one row per effect, with its paper, its
claim, what jaxnorm measures now, the criterion and the verdict.

    python -m experiments.reproduce                              # every effect -> runs/reproduce
    python -m experiments.reproduce --quick                      # every effect at a tiny size (for CI)
    python -m experiments.reproduce --only rank_collapse,z_loss --out runs/mine

Prints one line per effect as it finishes, then the table in markdown, and writes <out>/reproduce.csv and
<out>/reproduce.md (each written to a temporary file, then renamed into place). The claims and criteria are
experiments/published_effects.py, the measurements experiments/effect_measurements.py; every number is
computed when the command runs. An effect that does not reproduce is a result, not an error: the exit
status is 0 whatever the verdicts. An unknown --only name prints one line naming the allowed values and
exits with status 2 before anything runs or is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from experiments.published_effects import BY_NAME, NAMES, Reproduction
from jaxnorm.benchmarking.flags import OneLineParser  # light: argparse only

COLUMNS = ("effect", "paper", "claim", "measured", "threshold", "verdict")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m experiments.reproduce",
                description="Reproduce published effects on deep Transformers at small scale, one row each.")
    p.add_argument("--quick", action="store_true", help="every effect at a tiny size (fewer depths, seeds, steps)")
    p.add_argument("--out", default="runs/reproduce",
                   help="where reproduce.csv and reproduce.md go (default: %(default)s)")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these effects; allowed: {', '.join(NAMES)}")
    return p


def selected(text: str | None) -> tuple[str, ...]:
    """The effects `--only` names, in the table's order (all when not given); ValueError naming the allowed."""
    if text is None:
        return NAMES
    items = [t.strip() for t in text.split(",")]
    if not all(t in BY_NAME for t in items):
        raise ValueError(f"--only: invalid value {text!r}; allowed: comma-separated names from {', '.join(NAMES)}")
    return tuple(n for n in NAMES if n in items)


def run(names: Sequence[str], quick: bool = False) -> list[Reproduction]:
    """Measure and judge each named effect, one line each as it finishes."""
    from experiments import effect_measurements
    from jaxnorm.sweep import use_compilation_cache

    use_compilation_cache()  # a rerun reuses the compiled programs
    scale = effect_measurements.QUICK if quick else effect_measurements.FULL
    rows = []
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        row = BY_NAME[name].verdict(getattr(effect_measurements, name)(scale))
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: {'agree' if row.agree else 'disagree'} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: Sequence[Reproduction]) -> str:
    """The table: one row per effect, the verdict last."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c) for c in (r.effect, r.paper, r.claim, r.measured, r.threshold,
                                                           r.verdict)) + " |")
    return "\n".join(lines) + "\n"


def header(rows: Sequence[Reproduction], elapsed: float, quick: bool) -> str:
    """What reproduce.md says above its table: the count of agreements, the command, the machine and the
    wall time, so a committed table tells how it was made."""
    from jaxnorm.rundir import environment

    env = environment()
    agree = sum(r.agree for r in rows)
    return (f"# Published effects at small scale{' (--quick sizes)' if quick else ''}\n\n"
            f"{agree} of {len(rows)} agree.\n\n"
            f"- command: `{env['command']}`\n"
            f"- jax {env['jax']}, flax {env['flax']} on {env['device_count']}× {env['device_kind']} "
            f"({env['platform']}); host CPU: {env['cpu']}; git {str(env['git_commit'])[:10]}\n"
            f"- wall time: {elapsed:.0f} s\n\n")


def csv_text(rows: Sequence[Reproduction]) -> str:
    """The table as CSV: `verdict` is agree or disagree, `reason` says why not, `values` the raw numbers (JSON)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, "reason", "values"])
    for r in rows:
        writer.writerow([r.effect, r.paper, r.claim, r.measured, r.threshold, "agree" if r.agree else "disagree",
                         r.reason, json.dumps(r.values, default=float)])
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = selected(args.only)
    except ValueError as e:
        build_parser().error(str(e))
    start = time.perf_counter()
    print(f"reproducing {len(names)} effect{'s' * (len(names) > 1)} ({'quick' if args.quick else 'full'} sizes)",
          flush=True)
    rows = run(names, quick=args.quick)
    table = markdown(rows)
    print()
    print(table)
    from jaxnorm.rundir import atomic_write_bytes  # temporary file, then renamed: never half a table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "reproduce.csv", csv_text(rows).encode())
    agree = sum(r.agree for r in rows)
    elapsed = time.perf_counter() - start
    atomic_write_bytes(out / "reproduce.md", (header(rows, elapsed, args.quick) + table).encode())
    print(f"{agree} agree, {len(rows) - agree} disagree; {elapsed:.0f} s; "
          f"wrote {out / 'reproduce.csv'} and reproduce.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
