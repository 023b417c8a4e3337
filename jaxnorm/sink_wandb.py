"""`--log wandb`: a cell's points as Weights & Biases runs, one run per (cell, seed).

Each run is named `<cell_id>-seed<s>`, grouped by the sweep (`<out folder name>-<8 hex digits of the spec's
hash>`, the same for every shard, process and resume of one sweep), in project `$WANDB_PROJECT` (default
`jaxnorm`), with the cell's config.json, its axes and the seed as its config. Files go under `<out>/wandb/`.
W&B's own settings apply: `WANDB_MODE=offline` writes the runs there without a network (`wandb sync
<out>/wandb/offline-run-*` uploads them later), `WANDB_API_KEY` or `wandb login` for online runs.

A run's id is a hash of its group, cell, seed and the cell's summary.json, so exporting a cell again after an
interruption resumes the same run, whose steps already logged W&B drops, instead of making a second one.
W&B's histograms hold at most 512 buckets: profiles of deeper models are not sent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jaxnorm.sink_points import SeedPoints

EXTRA = "wandb"
MAX_BUCKETS = 512


def _wandb():
    try:
        import wandb
    except ImportError:
        raise ImportError(f"--log wandb needs wandb; install it with: pip install 'jaxnorm[{EXTRA}]'") from None
    return wandb


def check_available() -> None:
    _wandb()


def _by_step(points: SeedPoints, wandb) -> list[tuple[int, dict]]:
    """The points as one dict per step, in increasing step order (W&B refuses steps that go back)."""
    rows: dict[int, dict] = {}
    for tag, step, value in points.scalars:
        rows.setdefault(step, {})[tag] = value
    for tag, step, values in points.profiles:
        if len(values) <= MAX_BUCKETS:
            rows.setdefault(step, {})[tag] = wandb.Histogram(np_histogram=(list(map(float, values)),
                                                                            list(range(len(values) + 1))))
    for tag, step, values in points.distributions:
        rows.setdefault(step, {})[tag] = wandb.Histogram(list(map(float, values)))
    return sorted(rows.items())


class Writer:
    def __init__(self, out_dir: Path, run_name: str):
        self.out_dir, self.group = Path(out_dir), run_name
        self.wandb = _wandb()
        self.project = os.environ.get("WANDB_PROJECT", "jaxnorm")

    def write_cell(self, cell_id: str, config: dict, seeds: list[SeedPoints], version: str = "") -> None:
        wandb = self.wandb
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True)
        for points in seeds:
            run_id = hashlib.sha256(f"{self.group}/{cell_id}/{points.seed}/{version}".encode()).hexdigest()[:16]
            run = wandb.init(project=self.project, group=self.group, name=f"{cell_id}-seed{points.seed}", id=run_id,
                             dir=str(self.out_dir), job_type="cell", reinit="create_new", resume="allow",
                             config={**config, "cell_id": cell_id, "seed": points.seed}, settings=settings)
            try:
                for step, row in _by_step(points, wandb):
                    run.log(row, step=step)
            finally:
                run.finish()

    def close(self) -> None:
        pass
