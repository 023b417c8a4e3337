"""A sweep end to end, compile included: one set of programs per cell against shared, packed programs.

    python scripts/bench_sweep.py                          # the quick preset, each way once
    python scripts/bench_sweep.py --repeats 2 -- --depths 2,8 --blocks pre_ln --steps 100

Runs `python -m experiments.depth_sweep` with the given flags (after `--`) as whole processes, each with an
empty compilation cache and run directory of its own (cold, as a new user's first run): `--no-share`
(every cell compiles its own programs) and the default (programs shared across depths, cells packed).
With several repeats the two alternate, first one then the other first, so both see the same machine load.
Prints each run's wall time and the sweep's own split (compiling with its program count, running, writing,
figures), the median wall-time ratio, and with --record appends the table to a markdown file.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_LINE = re.compile(r"time: (?P<total>[\d.]+) s = compiling (?P<compiling>[\d.]+) s \((?P<programs>\d+) programs.*"
                       r"\+ running (?P<running>[\d.]+) s \+ writing (?P<writing>[\d.]+) s \+ figures and report "
                       r"(?P<figures>[\d.]+) s")
WAYS = {"per-cell": ["--no-share"], "shared": []}


def run_once(flags: list[str], way: str, scratch: Path) -> dict:
    """One cold sweep as a subprocess; its wall time and the split its last line reports."""
    out, cache = scratch / f"{way}-run", scratch / f"{way}-cache"
    for p in (out, cache):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(os.environ, JAXNORM_XLA_CACHE=str(cache))
    cmd = [sys.executable, "-m", "experiments.depth_sweep", *flags, *WAYS[way], "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"bench_sweep: {way} run failed (status {proc.returncode}): {tail}")
    match = TIME_LINE.search(proc.stdout)
    if match is None:
        raise SystemExit(f"bench_sweep: {way} run printed no time line")
    row = {k: float(v) for k, v in match.groupdict().items()}
    row["wall"] = wall
    return row


def table(rows: dict[str, list[dict]]) -> str:
    lines = ["| way | wall s (median) | programs compiled | compiling s | running s | writing s | figures s |",
             "|---|---|---|---|---|---|---|"]
    for way, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(f"| {way} | {med['wall']:.0f} | {med['programs']:.0f} | {med['compiling']:.0f} | "
                     f"{med['running']:.0f} | {med['writing']:.0f} | {med['figures']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, flags = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1, help="runs of each way, alternating (default 1)")
    p.add_argument("--record", help="append the table to this markdown file (e.g. benchmarks/sweep-cpu.md)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        print(f"error: --repeats: invalid value {args.repeats}; allowed: an integer >= 1", file=sys.stderr)
        return 2
    rows: dict[str, list[dict]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="jaxnorm-bench-sweep-") as scratch:
        for r in range(args.repeats):
            order = list(WAYS) if r % 2 == 0 else list(reversed(WAYS))
            for way in order:
                rows[way].append(run_once(flags, way, Path(scratch)))
                print(f"{way} (repeat {r + 1}): {rows[way][-1]['wall']:.0f} s", file=sys.stderr)
    ratio = statistics.median(r["wall"] for r in rows["per-cell"]) / statistics.median(r["wall"] for r in rows["shared"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    text = (f"sweep `python -m experiments.depth_sweep {' '.join(flags) or '(quick preset)'}`, cold (empty "
            f"compilation cache), {args.repeats} run(s) each, {machine}:\n\n{table(rows)}\n\n"
            f"per-cell / shared wall time: {ratio:.2f}x\n")
    print(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d')}\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
