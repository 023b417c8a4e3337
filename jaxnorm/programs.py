"""Every compiled program jaxnorm builds, and the one bounded cache that holds them.

`jit` is the only place jaxnorm calls `jax.jit`; `cached(kind, owner, key, build)` returns the program
for `key` among `owner`'s programs of one `kind` ("train": a configuration's init, chunk, measure and eval
programs, owned by its StepFns; "jacobian": the Jacobian probes, owned by the model structure and probe
config; "step_fns": the traced-once step functions, owned by their configs), building it on first use.
`clear()` drops everything (tests and benchmarks that must compile from scratch call it).

Each kind keeps the programs of its `MAX_CACHED_OWNERS` most recently used owners. Every XLA:CPU executable
holds hundreds of memory mappings until it is freed, and Linux allows ~65k per process, so a sweep that kept
all its cells' programs crashed after a few dozen cells. Sweeps order cells so that those sharing programs
(differing only in learning rate) are adjacent.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable

import jax

MAX_CACHED_OWNERS = {"train": 2, "jacobian": 2, "step_fns": 32}

_cache: dict[str, collections.OrderedDict[Hashable, dict[Hashable, Any]]] = {
    kind: collections.OrderedDict() for kind in MAX_CACHED_OWNERS}


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)`: the single place jaxnorm compiles a function."""
    return jax.jit(fn, **kwargs)


def cached(kind: str, owner: Hashable, key: Hashable, build: Callable[[], Any]) -> Any:
    """`owner`'s entry `key` of `kind`, built by `build()` the first time; the least recently used owner's
    entries are dropped (and with them their executables) beyond MAX_CACHED_OWNERS[kind]."""
    owners = _cache[kind]
    if owner in owners:
        owners.move_to_end(owner)
    else:
        owners[owner] = {}
        while len(owners) > MAX_CACHED_OWNERS[kind]:
            owners.popitem(last=False)
    entries = owners[owner]
    if key not in entries:
        entries[key] = build()
    return entries[key]


def cached_keys(kind: str) -> list[Hashable]:
    """The keys of every entry of `kind` held now (for tests: what has been compiled)."""
    return [key for entries in _cache[kind].values() for key in entries]


def num_owners(kind: str) -> int:
    return len(_cache[kind])


def clear() -> None:
    """Drop every cached program and step function."""
    for owners in _cache.values():
        owners.clear()
