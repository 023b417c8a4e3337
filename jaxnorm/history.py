"""`History`: everything one training run (cell) measured, as host numpy arrays.

Shapes use S for seeds, L for layers, H for heads:
- `metrics[name]`: [steps_run, S] scalars for every step (loss, accuracy, grad_norm, lr, ...).
- `layers[name]`: [len(layer_steps), S, L, ...] per-layer probes at logged steps, the first one being
  step 0 (the gradients-at-initialisation profile) and the last one the final parameters.
- `jacobian[name]`: [len(jacobian_steps), S, L] (or [.., S] for end-to-end) Jacobian probes.
- `eval_loss`, `eval_accuracy`: [len(eval_steps), S].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Codes for the first non-finite quantity seen in a run (TrainState.nonfinite_what, History.nonfinite).
NONFINITE_CODES = {0: "none", 1: "loss", 2: "gradient", 3: "update"}


@dataclasses.dataclass
class History:
    seeds: list[int]
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    layer_steps: np.ndarray
    layers: dict[str, np.ndarray]
    jacobian_steps: np.ndarray
    jacobian: dict[str, np.ndarray]
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    diverged: np.ndarray          # [S] bool
    diverged_step: np.ndarray     # [S] int, -1 if the seed did not diverge
    nonfinite: list[dict[str, Any]]  # per seed: {"step", "what", "layer"} of the first non-finite value, or {}
    config: dict[str, Any]        # the resolved model/optim/train/probe configs
    timing: dict[str, float]      # compile_s, run_s, steps_per_s
    # The final train state per seed (host arrays, leading axis S): parameters (an nnx.State), the model's
    # non-parameter state, and the optimizer state. `init_params` only when train(..., keep_init=True).
    params: Any = None
    rest: Any = None
    opt_state: Any = None
    init_params: Any = None

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    def final(self, name: str) -> np.ndarray:
        """The last recorded value of a per-step metric for each seed, [S]."""
        return self.metrics[name][-1]


def nonfinite_records(step: np.ndarray, what: np.ndarray, layer: np.ndarray) -> list[dict[str, Any]]:
    records = []
    for s, w, l in zip(step.tolist(), what.tolist(), layer.tolist()):
        records.append({} if s < 0 else {"step": s, "what": NONFINITE_CODES[w], "layer": None if l < 0 else l})
    return records


def stack_dicts(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[{name: array}, ...] -> {name: stacked array}, keeping only names present in every item."""
    if not items:
        return {}
    names = set(items[0]).intersection(*items[1:])
    return {k: np.stack([it[k] for it in items]) for k in sorted(names)}
