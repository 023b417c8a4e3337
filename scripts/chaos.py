"""Kill a tiny sweep again and again, damage its files between resumes, and check it still ends right.

    python scripts/chaos.py --kills 30              # its run time: benchmarks/presets.md
    python scripts/chaos.py --kills 2 --tiny        # the test's version (2 cells)

Runs the sweep once uninterrupted (the reference), then into a second directory: starts the same command,
kills it at a random moment (SIGKILL or SIGTERM, at random), and before the next start damages a random
file of a random finished cell (truncated, a byte flipped, deleted, replaced by garbage, or sweep.json
deleted) with probability --corrupt-p; after N kills it runs the command to the end. Every cell file is
written with a small delay before its rename (rundir's JAXNORM_TEST_WRITE_DELAY_S) so that kills often
land mid-write. Checks: every interrupted run ended by its signal (SIGTERM: exit 143 and the resume hint,
or death before the handler was installed), no traceback, the final run exits 0, no temporary file is
left, every cell verifies (jaxnorm.integrity) and results.csv equals the reference's (timing columns
aside). Prints `N kills, M corruptions, K cells redone, results identical`; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELL_FLAGS = ["--depths", "2", "--blocks", "pre_ln", "--norms", "layernorm", "--attentions", "dot",
              "--optimizers", "adamw", "--clip", "none", "--seeds", "2", "--steps", "6", "--batch-size", "8",
              "--seq-len", "8", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--log-every", "2",
              "--eval-every", "4", "--probe-every", "4", "--task", "reverse", "--no-progress", "--cpu-devices", "1"]
TIMING = ["compile_s", "run_s", "steps_per_s", "wall_s"]
DAMAGES = ("truncate", "flip", "delete", "garbage")


def command(out: Path, tiny: bool) -> list[str]:
    lrs = "1e-3,2e-3" if tiny else "1e-3,2e-3,3e-3,4e-3"
    return [sys.executable, "-m", "experiments.depth_sweep", *CELL_FLAGS, "--lrs", lrs, "--out", str(out)]


def start(out: Path, tiny: bool, delay: float) -> subprocess.Popen:
    env = {**os.environ, "JAXNORM_TEST_WRITE_DELAY_S": str(delay)}
    return subprocess.Popen(command(out, tiny), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def killed_run(out: Path, tiny: bool, rng: random.Random, window: float
               ) -> tuple[bool, float, str, str | None]:
    """One run killed after a random time in [0, window): (landed, seconds run, stderr, problem or None)."""
    sig = rng.choice((signal.SIGKILL, signal.SIGTERM))
    proc = start(out, tiny, delay=rng.choice((0.0, 0.05, 0.2)))
    t0 = time.monotonic()
    try:
        proc.wait(timeout=rng.uniform(0, window))
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=600)
    seconds, rc = time.monotonic() - t0, proc.returncode
    landed = rc != 0
    ok = {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 143, -signal.SIGTERM}
    problem = None
    if rc not in ok or "Traceback" in stderr:
        problem = f"{signal.Signals(sig).name}: exit {rc}: {stderr.strip()[-1500:]}"
    elif rc == 143 and "terminated (SIGTERM)" not in stderr:
        problem = f"SIGTERM: exit 143 without the resume hint: {stderr.strip()[-500:]}"
    return landed, seconds, stderr, problem


def damage(out: Path, rng: random.Random) -> str | None:
    """Damage one file of a random finished cell (or delete sweep.json); returns what was done."""
    cells = sorted(p.parent for p in (out / "cells").glob("*/summary.json")) if (out / "cells").is_dir() else []
    if not cells:
        return None
    if rng.random() < 0.1 and (out / "sweep.json").exists():
        (out / "sweep.json").unlink()
        return "deleted sweep.json"
    cell = rng.choice(cells)
    files = [cell / n for n in ("config.json", "metrics.jsonl", "layers.npz", "summary.json") if (cell / n).is_file()]
    path = rng.choice(files)  # summary.json is one of them
    how = rng.choice(DAMAGES)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "delete":
        path.unlink()
    else:
        path.write_bytes(os.urandom(rng.randrange(1, 64)))
    return f"{how} {path.relative_to(out)}"


def final_check(out: Path, reference: Path) -> list[str]:
    """Problems of the finished chaos directory compared with the reference (empty when all is well)."""
    import pandas as pd

    from jaxnorm import integrity

    problems = [f"temporary file left: {p}" for p in out.rglob("*.tmp")]
    ids = json.loads((reference / "sweep.json").read_text())["cell_ids"]
    for cell_id in ids:
        try:
            integrity.verify_cell(out / "cells" / cell_id)
        except integrity.DamagedCell as e:
            problems.append(str(e))
    a, b = (pd.read_csv(d / "results.csv").drop(columns=TIMING).sort_values(["cell_id", "seed"])
            .reset_index(drop=True) for d in (out, reference))
    if not a.equals(b):
        problems.append(f"results.csv differs from the reference:\n{a.compare(b) if a.shape == b.shape else a}")
    if not (out / "report.md").is_file():
        problems.append("no report.md")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=30, help="interrupted runs before the final one (default 30)")
    p.add_argument("--corrupt-p", type=float, default=0.5, help="chance of damaging a file after each kill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="2 cells instead of 4 (for the test)")
    p.add_argument("--work", help="working directory (default: a new temporary one)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="jaxnorm-chaos-"))
    reference, out = work / "reference", work / "chaos"

    t0 = time.monotonic()
    ref = subprocess.run(command(reference, args.tiny), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if ref.returncode != 0:
        print(f"error: the reference run failed: {ref.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    window = time.monotonic() - t0  # a run that ends before its kill narrows it: kills must land

    kills = corruptions = redone = 0
    problems: list[str] = []
    while kills < args.kills:
        landed, seconds, stderr, problem = killed_run(out, args.tiny, rng, window)
        kills += landed
        if not landed:
            window = 0.9 * seconds
        redone += stderr.count("\nredo: ") + stderr.startswith("redo: ")
        if problem:
            problems.append(problem)
        if rng.random() < args.corrupt_p and damage(out, rng):
            corruptions += 1
    final = subprocess.run(command(out, args.tiny), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    redone += final.stderr.count("\nredo: ") + final.stderr.startswith("redo: ")
    if final.returncode != 0:
        problems.append(f"final run: exit {final.returncode}: {final.stderr.strip()[-2000:]}")
    else:
        problems += final_check(out, reference)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"{kills} kills, {corruptions} corruptions, {redone} cells redone, {len(problems)} problems")
        return 1
    print(f"{kills} kills, {corruptions} corruptions, {redone} cells redone, results identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
