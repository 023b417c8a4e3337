"""A sweep end to end, compile included: one set of programs per cell against shared, packed programs.

    python scripts/bench_sweep.py                          # the quick preset, each way once
    python scripts/bench_sweep.py --repeats 2 -- --depths 2,8 --blocks pre_ln --steps 100
    python scripts/bench_sweep.py --baseline 402d875       # also the sweep as that commit ran it

Runs `python -m experiments.depth_sweep` with the given flags (after `--`) as whole processes, each with an
empty compilation cache and run directory of its own (cold, as a new user's first run): `--no-share`
(every cell compiles its own programs) and the default (programs shared across depths, cells packed).
`--baseline REV` adds a third way: the same command run by the code of git revision REV (extracted with
`git archive` into the scratch directory, run with the same Python and libraries), e.g. the per-cell path as
it was before programs were shared: today's `--no-share` already has the leaner programs (no separate
measurement program, one-shot programs at XLA:CPU's lowest level) that every path now compiles. The
baseline must run the same grid: `--baseline-flags` adds flags to its command only (e.g. to pin a preset
that changed since), and its results.csv must have the same cells, or the script stops.
With several repeats the ways alternate, in turn forwards and backwards, so all see the same machine load.
Prints each run's wall time and the sweep's own split (compiling with its program count, running, writing,
figures; a baseline that predates the split prints wall time only), the median wall-time ratios, and with
--record appends the table to a markdown file.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TIME_LINE = re.compile(r"time: (?P<total>[\d.]+) s = compiling (?P<compiling>[\d.]+) s \((?P<programs>\d+) programs.*"
                       r"\+ running (?P<running>[\d.]+) s \+ writing (?P<writing>[\d.]+) s \+ figures and report "
                       r"(?P<figures>[\d.]+) s")
WAYS = {"per-cell": ["--no-share"], "shared": []}
SPLIT = ("total", "compiling", "programs", "running", "writing", "figures")


def run_once(flags: list[str], way: str, scratch: Path, baseline: Path | None = None) -> dict:
    """One cold sweep as a subprocess; its wall time and the split its last line reports. `baseline`: the
    extracted source tree the "baseline" way runs (from its own directory, so that its `jaxnorm` is imported)."""
    out, cache = scratch / f"{way}-run", scratch / f"{way}-cache"
    for p in (out, cache):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(os.environ, JAXNORM_XLA_CACHE=str(cache))
    cwd = None
    if way == "baseline":
        env["PYTHONPATH"], cwd = str(baseline), baseline
    cmd = [sys.executable, "-m", "experiments.depth_sweep", *flags, *WAYS.get(way, []), "--out", str(out),
           "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"bench_sweep: {way} run failed (status {proc.returncode}): {tail}")
    match = TIME_LINE.search(proc.stdout)
    if match is None and way != "baseline":
        raise SystemExit(f"bench_sweep: {way} run printed no time line")
    row = {k: float(v) for k, v in match.groupdict().items()} if match else {k: math.nan for k in SPLIT}
    row["wall"] = wall
    row["cells"] = cell_list(out / "results.csv")
    return row


# results.csv's columns that name what a row trained: two ways compared must have the same rows.
GRID_COLUMNS = ("block", "depth", "norm", "attention", "optimizer", "clip", "lr", "task", "steps", "batch_size",
                "seq_len", "d_model", "seed")


def cell_list(results_csv: Path) -> list[tuple]:
    """Each row of a run's results.csv by what it trained (GRID_COLUMNS)."""
    with open(results_csv, newline="") as f:
        return sorted(tuple(r[c] for c in GRID_COLUMNS) for r in csv.DictReader(f))


def extract(rev: str, dest: Path) -> Path:
    """The repository's tree at `rev`, written under `dest` (git archive); SystemExit naming --baseline if
    this is not a git checkout or `rev` is unknown."""
    root = Path(__file__).resolve().parents[1]
    tar = dest.with_suffix(".tar")
    proc = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", "-o", str(tar), rev],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["git archive failed"])[-1]
        raise SystemExit(f"error: --baseline: invalid value {rev!r}; allowed: a revision of the git checkout "
                         f"at {root} ({reason})")
    dest.mkdir(parents=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()  # the extracted tree is what runs; the archive is only its transport
    return dest


def table(rows: dict[str, list[dict]], names: dict[str, str]) -> str:
    lines = ["| way | wall s (median) | programs compiled | compiling s | running s | writing s | figures s |",
             "|---|---|---|---|---|---|---|"]
    cell = lambda v: "—" if math.isnan(v) else f"{v:.0f}"  # noqa: E731 (a baseline without the split)
    for way, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", *SPLIT)}
        lines.append(f"| {names[way]} | {med['wall']:.0f} | {cell(med['programs'])} | {cell(med['compiling'])} | "
                     f"{cell(med['running'])} | {cell(med['writing'])} | {cell(med['figures'])} |")
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
    p.add_argument("--baseline", help="also run the sweep with the code of this git revision (e.g. 402d875)")
    p.add_argument("--baseline-flags", default="", help="flags added to the baseline's command only, "
                   "space-separated (e.g. to give it today's preset: '--lrs 1e-2 --steps 600')")
    args = p.parse_args(argv)
    if args.repeats < 1:
        print(f"error: --repeats: invalid value {args.repeats}; allowed: an integer >= 1", file=sys.stderr)
        return 2
    ways = list(WAYS) + (["baseline"] if args.baseline else [])
    names = {w: w for w in WAYS} | {"baseline": f"at {args.baseline}"}
    rows: dict[str, list[dict]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="jaxnorm-bench-sweep-") as scratch:
        source = extract(args.baseline, Path(scratch) / "baseline-src") if args.baseline else None
        for r in range(args.repeats):
            for way in (ways if r % 2 == 0 else list(reversed(ways))):
                extra = args.baseline_flags.split() if way == "baseline" else []
                rows[way].append(run_once(flags + extra, way, Path(scratch), source))
                print(f"{names[way]} (repeat {r + 1}): {rows[way][-1]['wall']:.0f} s", file=sys.stderr)
    for way in ways:
        if any(run["cells"] != rows["shared"][0]["cells"] for run in rows[way]):
            raise SystemExit(f"bench_sweep: the {names[way]} run trained other cells than the shared one "
                             f"({', '.join(GRID_COLUMNS)}); give it the same grid (--baseline-flags)")
    wall = {way: statistics.median(r["wall"] for r in runs) for way, runs in rows.items()}
    ratios = "\n".join(f"{names[way]} / shared wall time: {wall[way] / wall['shared']:.2f}x"
                       for way in ways if way != "shared")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    text = (f"sweep `python -m experiments.depth_sweep {' '.join(flags) or '(quick preset)'}`, cold (empty "
            f"compilation cache), {args.repeats} run(s) each, {machine}"
            + (f"; the baseline ran with `{args.baseline_flags}` added" if args.baseline_flags else "")
            + f":\n\n{table(rows, names)}\n\n{ratios}\n")
    print(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d')}\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
