"""Where a sweep's time went: compiling (from JAX's compile events, `programs.CompileLog`, and the time spent
waiting for programs compiled ahead, `jaxnorm.compile_ahead`), writing files, drawing figures and the
report, and running (the rest: training, probes, evaluation), printed as one line. What the compile-ahead
thread compiled while cells trained is named apart: it overlapped the running time.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from jaxnorm import programs


class TimeSplit:
    """Wall time since construction, split into named parts measured with `part(name)`; compiling comes
    from the compile log started here (every compile in the process counts, in whichever part it fell)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.compiles = programs.start_compile_log()
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t

    def seconds(self) -> dict[str, float]:
        """{total, compiling, writing, figures, running}: running = total − the others (never below 0)."""
        total, c = time.perf_counter() - self.t0, self.compiles
        # Compiling on the sweep's own path: its compiles, and its waits for the compile-ahead thread.
        compiling = c.total_s + self.parts.get("compiling ahead", 0.0)
        out = {"total": total, "compiling": compiling, "writing": self.parts.get("writing", 0.0),
               "figures": self.parts.get("figures", 0.0)}
        out["running"] = max(0.0, total - out["compiling"] - out["writing"] - out["figures"])
        return out

    def line(self, s: dict[str, float] | None = None) -> str:
        """The split as one line; `s`: a `seconds()` already taken (default: now)."""
        s, c = self.seconds() if s is None else s, self.compiles
        ahead = (f", {c.ahead_programs} of them compiled ahead while cells trained ({c.ahead_s:.0f} s there; "
                 f"waited for {self.parts.get('compiling ahead', 0.0):.0f} s)" if c.ahead_programs else "")
        return (f"time: {s['total']:.0f} s = compiling {s['compiling']:.0f} s ({c.programs} programs{ahead}; "
                f"{c.cache_hits} of all compiles read from the cache; tracing {c.trace_s:.0f} s, lowering "
                f"{c.lower_s:.0f} s, XLA {c.compile_s:.0f} s) + running {s['running']:.0f} s + writing "
                f"{s['writing']:.0f} s + figures and report {s['figures']:.0f} s")
