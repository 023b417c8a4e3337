"""A finished cell's numbers as the points a metric sink (TensorBoard, W&B) writes, read from the run directory.

Per seed:
- scalars `(tag, step, value)`: every metrics.jsonl field under `train/<name>` (`train/loss`, `train/grad_norm`,
  `train/lr`, ...) and its evaluation fields under `eval/<name>` (`eval/loss`, `eval/accuracy`), at the row's
  step; from layers.npz, the end-to-end Jacobian norm as `jacobian/end_to_end` (at each probe step) and the
  update's output change as `train/amplification` when recorded. A null (a non-finite number) is left out.
- profiles `(tag, step, values over layers [L])`: every per-layer norm of the metric registry
  (`jaxnorm.metrics`, those with `norm=True`: gradient and parameter norms, update ratios, residual RMS,
  branch ratios, Jacobian norms) at each step it was recorded, tagged `layers/<name>` (`layers/grad_norm/all`,
  `layers/jac_spectral`, `layers/branch_ratio/attn`); a step with a non-finite value is left out.
- distributions `(tag, step, values)`: the end-to-end Jacobian's singular values (`jacobian/singular_values`)
  when recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxnorm import metrics
from jaxnorm.results import load_cell_metrics, load_layers

# Names of a trailing axis of per-layer metrics (anything else is tagged by its index).
TRAILING_NAMES = {"branch_ratio": ("attn", "mlp")}
# Per-seed values recorded with the per-layer profiles: name -> tag.
SEED_SCALARS = {"jac_end_to_end": "jacobian/end_to_end", "amplification": "train/amplification"}
DISTRIBUTIONS = {"jac_singular_values": "jacobian/singular_values"}


@dataclasses.dataclass
class SeedPoints:
    seed: int
    scalars: list[tuple[str, int, float]] = dataclasses.field(default_factory=list)
    profiles: list[tuple[str, int, np.ndarray]] = dataclasses.field(default_factory=list)
    distributions: list[tuple[str, int, np.ndarray]] = dataclasses.field(default_factory=list)


def scalar_tag(field: str) -> str:
    """metrics.jsonl's field -> its sink tag: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`."""
    return f"eval/{field[len('eval_'):]}" if field.startswith("eval_") else f"train/{field}"


def _steps_of(name: str, layers: dict[str, np.ndarray]) -> np.ndarray:
    return layers["jacobian_steps"] if metrics.METRICS[name].kind == "jacobian" else layers["layer_steps"]


def profile_tags(name: str, values_LxK: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(tag, [L] values) of one per-layer array: [L] as is, [L, K] one tag per trailing index."""
    if values_LxK.ndim == 1:
        return [(f"layers/{name}", values_LxK)]
    flat = values_LxK.reshape(values_LxK.shape[0], -1)
    names = TRAILING_NAMES.get(name, tuple(str(k) for k in range(flat.shape[1])))
    return [(f"layers/{name}/{names[k]}", flat[:, k]) for k in range(flat.shape[1])]


def cell_points(run_dir: str | Path, cell_id: str) -> list[SeedPoints]:
    """Every point of a finished cell, one SeedPoints per seed in the cell's seed order."""
    layers = load_layers(run_dir, cell_id)
    seeds = [int(s) for s in layers["seeds"]]
    points = {seed: SeedPoints(seed) for seed in seeds}
    for row in load_cell_metrics(run_dir, cell_id):
        seed_points = points[int(row["seed"])]
        for field, value in row.items():
            if field not in ("step", "seed") and value is not None:
                seed_points.scalars.append((scalar_tag(field), int(row["step"]), float(value)))
    profiled = [m.name for m in metrics.METRICS.values() if m.per_layer and m.norm and m.kind != "step"]
    for s, seed in enumerate(seeds):
        out = points[seed]
        for name, tag in SEED_SCALARS.items():
            if name in layers:
                out.scalars += [(tag, int(t), float(v)) for t, v in zip(_steps_of(name, layers), layers[name][:, s])
                                if np.isfinite(v)]
        for name in profiled:
            if name in layers:
                for t, values in zip(_steps_of(name, layers), layers[name][:, s]):
                    out.profiles += [(tag, int(t), v) for tag, v in profile_tags(name, values) if np.isfinite(v).all()]
        for name, tag in DISTRIBUTIONS.items():
            if name in layers:
                out.distributions += [(tag, int(t), v) for t, v in zip(_steps_of(name, layers), layers[name][:, s])
                                      if np.isfinite(v).all()]
    return [points[seed] for seed in seeds]


def profile_histogram(values_L: np.ndarray) -> dict[str, Any]:
    """A per-layer profile as a histogram whose bucket l (from l to l + 1 on the x axis) holds layer l's value,
    so a histogram dashboard draws the profile over depth, one curve per step. Counts must be >= 0: the
    profiles are norms."""
    values = np.asarray(values_L, np.float64)
    centres = np.arange(len(values)) + 0.5
    return {"edges": np.arange(len(values) + 1, dtype=np.float64), "counts": values, "num": float(values.sum()),
            "sum": float((centres * values).sum()), "sum_squares": float((centres ** 2 * values).sum())}
