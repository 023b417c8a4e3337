"""Parallelism over local devices: a 2-D mesh ('seeds', 'data'); seeds split first, then the batch.

A cell's S seeds are independent models, so splitting them over devices needs no communication at all:
the seeds axis takes gcd(S, devices) devices and the batch is split over the rest (data parallelism, with
a gradient all-reduce that XLA inserts). With one device every function here is the identity, so the same
code runs on a laptop CPU, one GPU or a TPU slice. Batches are generated inside the compiled step, so
sharding is a constraint on the generated batch (inside `vmap(..., spmd_axis_name=SEED_AXIS)`) rather than
a host-side split.

On a CPU, JAX's one device runs a tiny model's many small operations mostly one after another; split into
several devices (`set_cpu_devices`, before JAX starts), seeds run side by side on the cores
(`scripts/bench.py`'s seeds section measures it). Only the seeds should be split there: splitting one
model's batch over CPU devices of the same cores adds the all-reduce and gains nothing.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnorm.config import ConfigError

SEED_AXIS, DATA_AXIS = "seeds", "data"


def train_mesh(seeds: int) -> Mesh | None:
    """A (gcd(seeds, n), n / gcd) mesh ('seeds', 'data') over the n local devices, or None when n is 1.
    Local: under `jax.distributed` each process runs its own cells on its own devices (jaxnorm.sweep)."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return None
    s = math.gcd(seeds, len(devices))
    return Mesh(np.asarray(devices).reshape(s, len(devices) // s), (SEED_AXIS, DATA_AXIS))


def seed_axis_name(mesh: Mesh | None) -> str | None:
    """The `spmd_axis_name` of the vmap over seeds (None without a mesh)."""
    return None if mesh is None else SEED_AXIS


def check_batch_divisible(batch_size: int, mesh: Mesh | None) -> None:
    n = 1 if mesh is None else mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ConfigError(f"TrainConfig.batch_size: invalid value {batch_size}; allowed: a multiple of the "
                          f"{n} devices the batch is sharded over")


def shard_batch(batch: Any, mesh: Mesh | None) -> Any:
    """Constrain one seed's [B, ...] batch (inside jit and the vmap over seeds) to be split along B over the
    mesh's data axis; the vmap adds the seeds axis."""
    if mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(DATA_AXIS)))


def shard_seeds(tree: Any, mesh: Mesh | None) -> Any:
    """Place every [S, ...] leaf split along S over the seeds axis (replicated over the data axis)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P(SEED_AXIS)))


def abstract_seeds(tree: Any, mesh: Mesh | None) -> Any:
    """`tree`'s shapes (jax.ShapeDtypeStruct leaves) placed as `shard_seeds` places arrays: what a program
    is lowered for ahead of its first call."""
    sharding = None if mesh is None else NamedSharding(mesh, P(SEED_AXIS))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def usable_cores() -> int:
    """The CPU cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_cpu_devices(seeds: int, cores: int | None = None) -> int:
    """The CPU device count that splits `seeds` evenly (so the batch itself is never split over CPU devices):
    of the divisors of `seeds` up to twice the core count, the one nearest the core count, the larger on a tie.

    One JAX CPU device runs a program's small operations mostly one after another, so a device per seed is
    worth a little oversubscription: 3 seeds on 2 cores ran 1.4-1.7x faster as 3 devices than as 1."""
    cores = max(usable_cores() if cores is None else cores, 1)
    divisors = [d for d in range(1, seeds + 1) if seeds % d == 0 and d <= 2 * cores]
    return min(divisors, key=lambda d: (abs(d - cores), -d))


def set_cpu_devices(n: int) -> None:
    """Expose the host CPU to JAX as `n` devices (`jax_num_cpu_devices`). Only possible before JAX has run
    anything in this process; accelerators are unaffected (they stay the default backend)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"cpu_devices: invalid value {n!r}; allowed: an integer >= 1")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        raise RuntimeError(f"cpu_devices: JAX has already started in this process ({e}); call "
                           "jaxnorm.sharding.set_cpu_devices before anything runs on a device") from None
