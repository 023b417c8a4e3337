"""A whole sweep against the PyTorch reference training the same grid, as subprocess wall times.

Three commands, each a fresh process timed from start to exit:
- `python -m experiments.depth_sweep` cold: an empty JAXNORM_XLA_CACHE directory and a fresh --out, so it
  traces and compiles every program (and trains, probes, evaluates, writes its files, figures and report);
- the same warm: the same cache directory again, a fresh --out (nothing to resume, programs from the cache);
- scripts/torch_train_grid.py: every cell and seed trained one after another by the PyTorch reference, with
  the same model, task, optimizer, schedule and steps (no Jacobian probes, no files).
Each repeat runs them in that order (cold first: warm needs its cache), so both sides see the same load.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxnorm.benchmarking.torch_peer import SCRIPTS, model_flags
from jaxnorm.sweep_spec import SweepSpec, preset

ROOT = SCRIPTS.parent
TORCH_BLOCKS = ("post_ln", "pre_ln", "rezero")  # the blocks torch_reference.py implements


@dataclasses.dataclass(frozen=True)
class Grid:
    """The `quick` preset's grid, possibly reduced (fewer blocks, depths, seeds or steps), or tiny in width."""

    blocks: tuple[str, ...]
    depths: tuple[int, ...]
    seeds: int
    steps: int
    tiny: bool = False

    def spec(self) -> SweepSpec:
        """The sweep this grid runs: the quick preset with the grid's axes (its width shrunk when tiny)."""
        base = preset("quick")
        model, train, probe = base.model, base.train.replace(steps=self.steps), base.probe
        if self.tiny:
            model = model.replace(d_model=16, num_heads=2, d_ff=32)
            train = train.replace(batch_size=4, seq_len=8)
        # A reduced run may be shorter than the preset's logging, evaluation and probe periods.
        train = train.replace(log_every=min(train.log_every, self.steps), eval_every=min(train.eval_every, self.steps))
        probe = probe.replace(probe_every=min(probe.probe_every, self.steps))
        return base.replace(blocks=self.blocks, depths=self.depths, seeds=self.seeds, model=model, train=train,
                            probe=probe)

    def describe(self) -> str:
        s = self.spec()
        return (f"blocks {', '.join(s.blocks)} × depths {', '.join(map(str, s.depths))}, {s.seeds} seed(s), "
                f"{s.train.steps} steps, lr {s.lrs[0]:g}, D={s.model.d_model}, B={s.train.batch_size}, "
                f"T={s.train.seq_len}, task {s.train.task}")


def quick_grid() -> Grid:
    spec = preset("quick")
    return Grid(spec.blocks, spec.depths, spec.seeds, spec.train.steps)


def sweep_command(grid: Grid, out: Path) -> list[str]:
    s = grid.spec()
    t, m = s.train, s.model
    return [sys.executable, "-m", "experiments.depth_sweep", "--blocks", ",".join(s.blocks),
            "--depths", ",".join(map(str, s.depths)), "--seeds", str(s.seeds), "--steps", str(t.steps),
            "--d-model", str(m.d_model), "--heads", str(m.num_heads), "--d-ff", str(m.d_ff),
            "--batch-size", str(t.batch_size), "--seq-len", str(t.seq_len), "--log-every", str(t.log_every),
            "--eval-every", str(t.eval_every), "--probe-every", str(s.probe.probe_every), "--no-progress",
            "--out", str(out)]


def torch_command(python: str, grid: Grid, threads: str) -> list[str]:
    s = grid.spec()
    t = s.train
    cmd = [python, "-W", "ignore", str(SCRIPTS / "torch_train_grid.py"), "--blocks", ",".join(s.blocks),
           "--depths", ",".join(map(str, s.depths)), "--seeds", str(s.seeds), "--log-every", str(t.log_every),
           "--eval-every", str(t.eval_every), "--eval-batches", str(t.eval_batches),
           *model_flags(s.model, s.optim.replace(lr=s.lrs[0]), t)]
    return cmd + ["--threads", threads]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """(wall seconds from start to exit, stdout) of a command; RuntimeError with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return seconds, proc.stdout


def sweep_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # it would win over ours
    return {**env, "JAXNORM_XLA_CACHE": str(cache)}


def final_eval_losses_jax(out: Path) -> dict[tuple[str, int], float]:
    """Mean over seeds of each cell's final held-out loss, from a sweep's results.csv."""
    per_cell: dict[tuple[str, int], list[float]] = {}
    with open(out / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            per_cell.setdefault((row["block"], int(row["depth"])), []).append(float(row["final_eval_loss"]))
    return {k: statistics.mean(v) for k, v in per_cell.items()}


def final_eval_losses_torch(result: dict) -> dict[tuple[str, int], float]:
    per_cell: dict[tuple[str, int], list[float]] = {}
    for c in result["cells"]:
        per_cell.setdefault((c["block"], c["depth"]), []).append(c["final_eval_loss"])
    return {k: statistics.mean(v) for k, v in per_cell.items()}


def end_to_end(grid: Grid, torch_python: str | None, *, repeats: int = 1, threads: str = "auto") -> dict:
    """Median wall seconds of each command over `repeats` rounds, and each side's final held-out losses (mean
    over seeds, per cell) from the last round: {"cold_s", "warm_s", "torch_s" (None without torch), "torch"
    (its JSON), "torch_error" (why it did not run, if it failed), "losses_jax", "losses_torch"}. A failing
    sweep raises: it is jaxnorm's own command."""
    cold, warm, torch_s, torch_result, torch_error, losses_jax = [], [], [], None, None, {}
    with tempfile.TemporaryDirectory(prefix="jaxnorm-e2e-") as tmp:
        for r in range(repeats):
            cache = Path(tmp) / f"xla-cache-{r}"
            cache.mkdir()
            cold.append(timed(sweep_command(grid, Path(tmp) / f"cold-{r}"), sweep_env(cache))[0])
            if torch_python is not None and torch_error is None:
                try:
                    seconds, stdout = timed(torch_command(torch_python, grid, threads))
                    torch_s.append(seconds)
                    torch_result = json.loads(stdout.strip().splitlines()[-1])
                except RuntimeError as e:  # no torch in that interpreter, say: the JAX rows still stand
                    torch_error = str(e)
            warm.append(timed(sweep_command(grid, Path(tmp) / f"warm-{r}"), sweep_env(cache))[0])
            losses_jax = final_eval_losses_jax(Path(tmp) / f"warm-{r}")
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm),
            "torch_s": statistics.median(torch_s) if torch_s else None, "torch": torch_result,
            "torch_error": torch_error,
            "losses_jax": losses_jax, "losses_torch": final_eval_losses_torch(torch_result) if torch_result else {}}
