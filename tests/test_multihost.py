"""Several hosts: `depth_sweep --distributed` in two JAX processes on this machine, joined as a two-task SLURM
job would join them (jax.distributed's own SLURM detection, gloo collectives on CPU). Each process runs its
share of the cells on its own devices; together they fill one run directory with the results one process
gets."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments import depth_sweep
from tiny_sweep import TIMING, TINY_CELL_FLAGS

ROOT = Path(__file__).resolve().parents[1]
# Three of the shared tiny cells (one compiled program), so the split is 2 + 1 cells. Progress stays on: each
# process's first stderr line names its share.
FLAGS = [*TINY_CELL_FLAGS, "--lrs", "1e-3,2e-3,3e-3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def without_cluster(env: dict) -> dict:
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}


def test_two_processes_split_the_cells_and_match_one_process(tmp_path, capsys):
    # One process over the cells first, in this test process (one CPU device). The two processes below also
    # use one CPU device each, so they load its compiled programs from the persistent compilation cache.
    one = tmp_path / "one"
    assert depth_sweep.main([*FLAGS, "--no-progress", "--out", str(one)]) == 0
    capsys.readouterr()

    out, port = tmp_path / "two", free_port()
    procs = []
    for rank in range(2):
        env = dict(without_cluster(os.environ), SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost",
                   SLURM_NTASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                   JAX_COORDINATOR_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.depth_sweep", *FLAGS, "--distributed",
                                       "--cpu-devices", "1", "--out", str(out)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        finished = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, finished):
        assert p.returncode == 0, err[-3000:]
    shares = [re.search(r"process (\d)/2: (\d) cells", err) for _, err in finished]
    assert [m.groups() for m in shares if m] == [("0", "2"), ("1", "1")], [err[-2000:] for _, err in finished]

    a, b = (pd.read_csv(d / "results.csv").drop(columns=TIMING).sort_values(["cell_id", "seed"])
            .reset_index(drop=True) for d in (out, one))
    assert len(a) == 6 and {"final_loss", "final_eval_loss", "diverged"} <= set(a.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)
    env = json.loads((out / "sweep.json").read_text())["environment"]
    assert env["process_count"] == 2 and env["device_count"] == 2 and env["local_device_count"] == 1
    # Process 0 waited for process 1's cell before writing the report and figures.
    assert (out / "report.md").exists() and any((out / "figures").glob("*.png"))
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(p.name for p in (one / "cells").iterdir())


def test_distributed_outside_a_cluster_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "experiments.depth_sweep", *FLAGS, "--distributed",
                           "--out", str(out)], cwd=ROOT, env=without_cluster(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: --distributed: ") and "allowed: " in proc.stderr
    assert not out.exists()
