"""Wall times for benchmarks: medians of repeats, measured side by side, and cold compiles.

Ratios between programs are only meaningful when the programs saw the same machine: on a shared machine
the load changes from one minute to the next, so programs that are compared run in turn, repeat by repeat
(`interleaved_medians`), never one after the other.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax

Timer = Callable[[], float]  # runs the measured work once and returns its seconds


def wall_timer(fn: Callable[[], Any]) -> Timer:
    """A timer of fn(): the wall time until its result is ready (block_until_ready)."""
    def timed() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t0
    return timed


def interleaved_timer_medians(timers: dict[str, Timer], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each timer, measured side by side: every repeat runs each timer once, in turn, so a
    change in machine load hits all of them alike. The first `warmup` runs of each (compiling) are not kept.
    A timer may measure work done elsewhere (another process), reporting that process's own clock."""
    for timer in timers.values():
        for _ in range(warmup):
            timer()
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: statistics.median(ts) for name, ts in times.items()}


def interleaved_medians(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each callable (its result blocked on), measured side by side as
    `interleaved_timer_medians` does."""
    return interleaved_timer_medians({name: wall_timer(fn) for name, fn in fns.items()}, repeats=repeats,
                                     warmup=warmup)


def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() (its result blocked on) over `repeats` calls, after `warmup` calls."""
    return interleaved_medians({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]


def cold_compile(make_jitted: Callable[[], Any], *args: Any) -> tuple[float, float]:
    """(lower_s, compile_s) of a freshly made jitted function on abstract args, with JAX's caches cleared."""
    jax.clear_caches()
    jitted = make_jitted()
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def duration(seconds: float) -> str:
    """'42 s', '7.5 min', '3.25 h', '2.1 days': three significant figures in the largest unit not above it."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"
