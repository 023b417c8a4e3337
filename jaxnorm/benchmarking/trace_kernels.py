"""XLA kernel time by HLO op kind, from a Chrome-format trace that `jax.profiler.trace` writes.

Plain-Python functions for scripts/profile_step.py (no JAX import), so they can be checked on a hand-made trace.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

_SUFFIX = re.compile(r"(\.\d+)+$")
# Control-flow ops: their events span the kernels they run (a scan's while loop, a called computation), so
# counting them would count those kernels twice.
CONTROL_FLOW = ("while", "call", "conditional")


def op_kind(hlo_op: str) -> str:
    """The kind of an HLO op from its name: `ynn_fusion.12` -> `ynn_fusion`, `dot.3.1` -> `dot`."""
    return _SUFFIX.sub("", hlo_op)


def kernel_events(trace: dict) -> list[dict]:
    """The complete ('X') events of a Chrome-format trace that are XLA kernel executions: they name an HLO op
    that is not a control-flow op."""
    return [e for e in trace.get("traceEvents", [])
            if e.get("ph") == "X" and isinstance(e.get("args"), dict) and "hlo_op" in e["args"]
            and op_kind(e["args"]["hlo_op"]) not in CONTROL_FLOW]


def kernel_time_by_kind(events: list[dict], calls: int) -> dict[str, tuple[float, float]]:
    """{op kind: (kernel milliseconds per call, kernels per call)}, largest time first. Durations are in µs."""
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        kind = op_kind(e["args"]["hlo_op"])
        total[kind] += float(e["dur"])
        count[kind] += 1
    return {k: (us / 1e3 / calls, count[k] / calls) for k, us in total.most_common()}


def read_trace(trace_dir: Path) -> dict:
    """The newest *.trace.json.gz that jax.profiler wrote under trace_dir."""
    files = sorted(trace_dir.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)
