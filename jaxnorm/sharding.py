"""Data parallelism over local devices: a 1-D mesh ('data',), batch sharded, everything else replicated.

With one device every function here is the identity, so the same code runs on a laptop CPU, one GPU,
or a TPU slice. Batches are generated inside the compiled step, so sharding is a constraint on the
generated batch rather than a host-side split: XLA (GSPMD) partitions the step and inserts the gradient
all-reduce.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnorm.config import ConfigError

DATA_AXIS = "data"


def data_mesh() -> Mesh | None:
    """A mesh over every device, or None when there is only one."""
    devices = jax.devices()
    return None if len(devices) == 1 else Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divisible(batch_size: int, mesh: Mesh | None) -> None:
    if mesh is not None and batch_size % mesh.size:
        raise ConfigError(f"TrainConfig.batch_size: invalid value {batch_size}; allowed: a multiple of the "
                          f"{mesh.size} devices the batch is sharded over")


def shard_batch(batch: Any, mesh: Mesh | None) -> Any:
    """Constrain a [B, ...] batch (inside jit) to be split along B over the mesh's data axis."""
    if mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(DATA_AXIS)))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Place every leaf on all devices (parameters, optimizer state, keys)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P()))
