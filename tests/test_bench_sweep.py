"""scripts/bench_sweep.py: both ways run cold on a tiny grid, and the table, program counts and ratio print."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _bench_sweep_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "scripts" / "bench_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git_checkout() -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _git_checkout(), reason="--baseline extracts a revision of the git checkout")
def test_baseline_source_is_the_revisions_tree(tmp_path):
    bench_sweep = _bench_sweep_module()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    src = bench_sweep.extract(head, tmp_path / "src")
    committed = subprocess.run(["git", "-C", str(ROOT), "show", f"{head}:experiments/depth_sweep.py"],
                               capture_output=True, text=True).stdout
    assert (src / "experiments" / "depth_sweep.py").read_text() == committed
    assert (src / "jaxnorm" / "__init__.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # the archive it came in is gone


def test_baseline_refuses_an_unknown_revision():
    proc = subprocess.run([sys.executable, "scripts/bench_sweep.py", "--baseline", "no-such-revision-x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --baseline: invalid value 'no-such-revision-x'; "
                                                           "allowed: a revision of the git checkout")


def test_rows_are_compared_by_what_they_trained(tmp_path):
    bench_sweep = _bench_sweep_module()
    header = ",".join(("cell_id", *bench_sweep.GRID_COLUMNS, "final_loss"))
    row = lambda lr, seed: f"c,pre_ln,2,layernorm,dot,adamw,none,{lr},reverse,600,16,16,32,{seed},0.1"  # noqa: E731
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text("\n".join([header, row(0.01, 0), row(0.01, 1)]) + "\n")
    b.write_text("\n".join([header, row(0.01, 1), row(0.01, 0)]) + "\n")   # the same rows, another order
    c.write_text("\n".join([header, row(0.003, 0), row(0.003, 1)]) + "\n")  # another learning rate
    assert bench_sweep.cell_list(a) == bench_sweep.cell_list(b)
    assert bench_sweep.cell_list(a) != bench_sweep.cell_list(c)


def test_table_marks_a_baseline_without_the_split():
    bench_sweep = _bench_sweep_module()
    split = {k: 1.0 for k in bench_sweep.SPLIT}
    rows = {"shared": [dict(split, wall=10.0)], "baseline": [dict({k: math.nan for k in bench_sweep.SPLIT}, wall=40.0)]}
    text = bench_sweep.table(rows, {"shared": "shared", "baseline": "at abc123"})
    assert "| shared | 10 | 1 | 1 | 1 | 1 | 1 |" in text
    assert "| at abc123 | 40 | — | — | — | — | — |" in text
