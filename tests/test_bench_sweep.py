"""scripts/bench_sweep.py: both ways run cold on a tiny grid, and the table, program counts and ratio print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--depths", "2,3", "--blocks", "pre_ln", "--lrs", "1e-3,3e-3", "--steps", "4", "--log-every", "2",
        "--eval-every", "4", "--probe-every", "4", "--d-model", "8", "--heads", "2", "--d-ff", "16", "--seeds", "1"]


def test_bench_sweep_compares_per_cell_and_shared_programs(tmp_path):
    record = tmp_path / "sweep.md"
    proc = subprocess.run([sys.executable, "scripts/bench_sweep.py", "--record", str(record), "--", *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (per-cell|shared) \| \d+ \| (\d+) \|",
                                                               proc.stdout, re.M)}
    # 4 cells (2 depths x 2 learning rates): per cell, init/chunk/eval/Jacobian programs per depth (learning
    # rates already shared a program); shared, one set for both depths and both rates, packed.
    assert rows == {"per-cell": 8, "shared": 4}
    assert re.search(r"per-cell / shared wall time: \d+\.\d\dx", proc.stdout)
    assert record.read_text().count("| per-cell |") == 1


def test_bench_sweep_refuses_bad_repeats():
    proc = subprocess.run([sys.executable, "scripts/bench_sweep.py", "--repeats", "0"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --repeats: invalid value 0; allowed: an integer >= 1"
