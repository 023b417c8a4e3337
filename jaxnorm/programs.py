"""Every compiled program jaxnorm builds, and the one bounded cache that holds them.

`jit` is the only place jaxnorm calls `jax.jit`; `cached(kind, owner, key, build)` returns the program
for `key` among `owner`'s programs of one `kind` ("train": a configuration's init, chunk, measure and eval
programs, owned by its StepFns; "jacobian": the Jacobian probes, owned by the model structure and probe
config; "step_fns": the traced-once step functions, owned by their configs), building it on first use.
`clear()` drops everything (tests and benchmarks that must compile from scratch call it).

`CompileLog` counts what XLA compiled and how long tracing, lowering and compiling took (from JAX's
monitoring events), so a sweep can print where its time went. A program jaxnorm builds is named
`jaxnorm_<name>`; compiles of other (small, eager) computations are counted apart.

Each kind keeps the programs of its `MAX_CACHED_OWNERS` most recently used owners. Every XLA:CPU executable
holds hundreds of memory mappings until it is freed, and Linux allows ~65k per process, so a sweep that kept
all its cells' programs crashed after a few dozen cells. Sweeps order cells so that those sharing programs
(differing only in learning rate) are adjacent. Three owners, because a sweep that compiles ahead
(jaxnorm.compile_ahead) adds the next structure's programs while the previous structure's are still the most
recently used and the current structure's, compiled ahead, have not been used yet: with two, the current
ones were dropped just before their first call and compiled again.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable, Hashable

import jax

from jaxnorm.compile_ahead import THREAD_NAME as AHEAD_THREAD

MAX_CACHED_OWNERS = {"train": 3, "jacobian": 3, "step_fns": 32}

_cache: dict[str, collections.OrderedDict[Hashable, dict[Hashable, Any]]] = {
    kind: collections.OrderedDict() for kind in MAX_CACHED_OWNERS}


PREFIX = "jaxnorm_"


def jit(fn: Callable, *, name: str | None = None, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)`: the single place jaxnorm compiles a function. `name`: the program's name in
    compile logs (`jaxnorm_<name>`), by which `CompileLog` tells jaxnorm's programs from small eager ones."""
    if name is not None:
        inner = fn

        def fn(*args: Any, **kw: Any) -> Any:
            return inner(*args, **kw)

        fn.__name__ = fn.__qualname__ = PREFIX + name
    return jax.jit(fn, **kwargs)


# JAX's monitoring events: tracing to a jaxpr, lowering to MLIR, and the backend compile (which a
# persistent-cache hit also reports, as a read).
_TRACE, _LOWER, _COMPILE = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                            "/jax/core/compile/backend_compile_duration")
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileLog:
    """Seconds spent tracing, lowering and compiling, and how many programs were compiled (jaxnorm's own
    and others) or read from the persistent cache, since `start()`. The seconds are the calling threads';
    `ahead_s` is the total of the compile-ahead thread's (jaxnorm.compile_ahead), which overlaps running."""

    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    ahead_s: float = 0.0
    programs: int = 0        # jaxnorm's programs compiled or read from the persistent cache (any thread)
    ahead_programs: int = 0  # of those, compiled by the compile-ahead thread
    other: int = 0           # other computations (eager ops, small helpers)
    cache_hits: int = 0      # of all the above, read from the persistent compilation cache

    @property
    def total_s(self) -> float:
        return self.trace_s + self.lower_s + self.compile_s


_log: CompileLog | None = None
_lock = threading.Lock()
_listening = False


def _on_duration(event: str, seconds: float, **kwargs: Any) -> None:
    log = _log
    if log is None:
        return
    with _lock:
        if event in (_TRACE, _LOWER, _COMPILE) and threading.current_thread().name.startswith(AHEAD_THREAD):
            log.ahead_s += seconds
            if event == _COMPILE and PREFIX in str(kwargs.get("fun_name", "")):
                log.programs += 1
                log.ahead_programs += 1
            return
        if event == _TRACE:
            log.trace_s += seconds
        elif event == _LOWER:
            log.lower_s += seconds
        elif event == _COMPILE:
            log.compile_s += seconds
            if PREFIX in str(kwargs.get("fun_name", "")):
                log.programs += 1
            else:
                log.other += 1


def _on_event(event: str, **kwargs: Any) -> None:
    log = _log
    if log is not None and event == _CACHE_HIT:
        with _lock:
            log.cache_hits += 1


def start_compile_log() -> CompileLog:
    """A fresh CompileLog that collects from now on (the previous one, if any, stops collecting)."""
    global _log, _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    _log = CompileLog()
    return _log


_cache_lock = threading.Lock()  # the compile-ahead thread builds programs while the sweep's thread looks them up
_MISSING = object()


def cached(kind: str, owner: Hashable, key: Hashable, build: Callable[[], Any]) -> Any:
    """`owner`'s entry `key` of `kind`, built by `build()` the first time; the least recently used owner's
    entries are dropped (and with them their executables) beyond MAX_CACHED_OWNERS[kind]. Thread-safe; two
    threads building one entry at once both build it, and the first one stored is kept."""
    with _cache_lock:
        owners = _cache[kind]
        if owner in owners:
            owners.move_to_end(owner)
        else:
            owners[owner] = {}
            while len(owners) > MAX_CACHED_OWNERS[kind]:
                owners.popitem(last=False)
        entries = owners[owner]
        entry = entries.get(key, _MISSING)
    if entry is _MISSING:
        built = build()
        with _cache_lock:
            entry = entries.setdefault(key, built)
    return entry


def cached_keys(kind: str) -> list[Hashable]:
    """The keys of every entry of `kind` held now (for tests: what has been compiled)."""
    return [key for entries in _cache[kind].values() for key in entries]


def num_owners(kind: str) -> int:
    return len(_cache[kind])


def clear() -> None:
    """Drop every cached program and step function."""
    for owners in _cache.values():
        owners.clear()
