"""What a run draws from its seeds, public so that a notebook can rebuild exactly what a cell measured.

- `seed_keys(seed)`: the keys of one seed of `jaxnorm.train` / a sweep cell. Seed s (train_cfg.seed,
  seed + 1, ...) starts from `jax.random.key(s)`, split once into (init key, data key): the init key is what
  `jaxnorm.init(model_cfg, init_key)` initialises that seed's model from (the same parameters as the run's
  step 0, `History.init_params`), the data key draws its training batches.
- `probe_tokens(train_cfg, probe_cfg)`: the fixed probe batch [probe_batch, seq_len] every Jacobian probe
  measures on, the same for every seed and every step, drawn from `PROBE_KEY` (independent of the seeds'
  training data) from the task's held-out split.
- `probe_key(step)`: the key of the probes' random start vectors at a probe step.
"""

from __future__ import annotations

import jax

from jaxnorm.config import ProbeConfig, TrainConfig
from jaxnorm.trainer import PROBE_KEY, probe_tokens as _probe_tokens_of_data

__all__ = ["PROBE_KEY", "seed_keys", "probe_tokens", "probe_key"]


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, data key) of seed `seed`, as `jaxnorm.trainer.train` derives them."""
    init_key, data_key = jax.random.split(jax.random.key(seed))
    return init_key, data_key


def probe_tokens(train_cfg: TrainConfig, probe_cfg: ProbeConfig | None = None) -> jax.Array:
    """The probe batch int32[probe_batch, seq_len] of a run with these configs (see the module docstring)."""
    from jaxnorm.data import make_dataset

    return _probe_tokens_of_data(make_dataset(train_cfg), ProbeConfig() if probe_cfg is None else probe_cfg)


def probe_key(step: int) -> jax.Array:
    """The key of the Jacobian probes' random start vectors at probe step `step` (step 0 at initialisation)."""
    return jax.random.key(PROBE_KEY + step)
