"""jaxnorm: measure why deep Transformers' gradients vanish or explode, and which remedies work.

The public API for notebooks and scripts (everything else lives in the submodules)::

    import jaxnorm
    spec = jaxnorm.preset("quick").replace(depths=(2, 8), blocks=("post_ln", "pre_ln"))
    df = jaxnorm.run_sweep(spec, "runs/nb")          # trains, writes runs/nb/{results.csv,figures,...}
    cells = jaxnorm.cell_table(df)                   # one row per cell: seeds aggregated by one rule, with spreads
    print(cells.pivot(index="block", columns="depth", values="grad_decades_final"))
    fig = jaxnorm.grad_profile(df, jaxnorm.LayerStore("runs/nb"))   # one figure, inline in a notebook

Configs: `ModelConfig`, `OptimConfig`, `TrainConfig`, `ProbeConfig` (frozen, validated; a bad value raises
`ConfigError`). One run: `train(...) -> History`. A grid: `SweepSpec` / `preset(name)` and `run_sweep`.
Reading results: `load`, `load_layers`, `load_metrics`, `lr_sensitivity`, `cell_table` (seeds aggregated by
the one rule of `jaxnorm.aggregate`), `trained` (`jaxnorm.outcome`). Figures: `draw_all(run_dir)`
writes every PNG; the per-figure functions take the data and return a matplotlib Figure (or None).
Model: `Model` (Flax NNX) and the functional core `init` / `apply`; a saved cell's model: `load_params`,
`load_opt_state`. The residual stream's maps for `jax.jacfwd` / `jax.linearize`: `block_map`, `stack_map`,
`stream` (`jaxnorm.maps`); what a run draws: `seed_keys`, `probe_tokens`, `probe_key` (`jaxnorm.run_inputs`).
Outputs beside the run directory: `CellOutputs` (checkpoints, metric sinks, a mirror), `export_metrics`,
`mirror_run_dir`. The variant names are the tuples
`BLOCKS`, `NORMS`, `ATTENTIONS`, `ACTIVATIONS`, `INITS`, `OPTIMIZERS`, `CLIPS`, `SCHEDULES`, `TASKS`.

`import jaxnorm` is light: only the configs are imported eagerly; JAX, Flax, pandas and matplotlib are
imported on first use of a name that needs them. A cell's seeds, then its batches, are split over all local
devices (TPU cores, GPUs) automatically (`jaxnorm.sharding`); on a CPU, `jaxnorm.sharding.set_cpu_devices(n)`
before anything runs makes n devices, so that seeds run side by side.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxnorm.config import (
    ACTIVATIONS, ATTENTIONS, BLOCKS, CLIPS, INITS, NORMS, OPTIMIZERS, SCHEDULES, TASKS, ConfigError,
    ModelConfig, OptimConfig, ProbeConfig, TrainConfig,
)

__version__ = "0.1.0"

# Public name -> (module, attribute), imported on first access (PEP 562) so `import jaxnorm` stays cheap.
_LAZY = {
    # model (Flax NNX) and its functional core
    "Model": ("jaxnorm.model", "Model"),
    "apply": ("jaxnorm.model", "apply"),
    "init": ("jaxnorm.model", "init"),
    # one training run
    "train": ("jaxnorm.trainer", "train"),
    "resolve_config": ("jaxnorm.trainer", "resolve_config"),
    "History": ("jaxnorm.history", "History"),
    # research: a cell's saved model, the residual stream's maps, what a run draws
    "load_params": ("jaxnorm.checkpoints", "load_params"),
    "load_opt_state": ("jaxnorm.checkpoints", "load_opt_state"),
    "block_map": ("jaxnorm.maps", "block_map"),
    "stack_map": ("jaxnorm.maps", "stack_map"),
    "stream": ("jaxnorm.maps", "stream"),
    "seed_keys": ("jaxnorm.run_inputs", "seed_keys"),
    "probe_tokens": ("jaxnorm.run_inputs", "probe_tokens"),
    "probe_key": ("jaxnorm.run_inputs", "probe_key"),
    # sweeps
    "run_sweep": ("jaxnorm.sweep", "run"),
    "SweepSpec": ("jaxnorm.sweep_spec", "SweepSpec"),
    "preset": ("jaxnorm.sweep_spec", "preset"),
    "CellOutputs": ("jaxnorm.cell_outputs", "CellOutputs"),
    "export_metrics": ("jaxnorm.exports", "export"),
    "mirror_run_dir": ("jaxnorm.mirror", "mirror"),
    # reading a run directory
    "load": ("jaxnorm.results", "load"),
    "load_layers": ("jaxnorm.results", "load_layers"),
    "load_metrics": ("jaxnorm.results", "load_metrics"),
    "lr_sensitivity": ("jaxnorm.results", "lr_sensitivity"),
    "cell_table": ("jaxnorm.aggregate", "cell_table"),
    "trained": ("jaxnorm.outcome", "trained"),
    # figures: draw_all(run_dir) writes PNGs; the others take data and return a Figure (or None)
    "draw_all": ("jaxnorm.figures", "draw_all"),
    "LayerStore": ("jaxnorm.plots", "LayerStore"),
    "grad_profile": ("jaxnorm.plots_layers", "grad_profile"),
    "act_grad_profile": ("jaxnorm.plots_layers", "act_grad_profile"),
    "jacobian_profile": ("jaxnorm.plots_layers", "jacobian_profile"),
    "jacobian_spectrum": ("jaxnorm.plots_layers", "jacobian_spectrum"),
    "token_alignment": ("jaxnorm.plots_layers", "token_alignment"),
    "loss_vs_depth": ("jaxnorm.plots_training", "loss_vs_depth"),
    "stability_map": ("jaxnorm.plots_training", "stability_map"),
    "loss_curves": ("jaxnorm.plots_training", "loss_curves"),
    "lr_sensitivity_curves": ("jaxnorm.plots_training", "lr_sensitivity_curves"),
    "logit_growth": ("jaxnorm.plots_training", "logit_growth"),
}

__all__ = [
    "__version__",
    # configs and registries
    "ModelConfig", "OptimConfig", "TrainConfig", "ProbeConfig", "ConfigError",
    "BLOCKS", "NORMS", "ATTENTIONS", "ACTIVATIONS", "INITS", "OPTIMIZERS", "CLIPS", "SCHEDULES", "TASKS",
    "Model", "init", "apply", "train", "resolve_config", "History", "run_sweep", "SweepSpec", "preset",
    "load_params", "load_opt_state", "block_map", "stack_map", "stream", "seed_keys", "probe_tokens", "probe_key",
    "CellOutputs", "export_metrics", "mirror_run_dir",
    "load", "load_layers", "load_metrics", "lr_sensitivity", "cell_table", "trained",
    "draw_all", "LayerStore", "grad_profile", "act_grad_profile", "jacobian_profile", "jacobian_spectrum",
    "token_alignment", "loss_vs_depth", "stability_map", "loss_curves", "lr_sensitivity_curves", "logit_growth",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jaxnorm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
