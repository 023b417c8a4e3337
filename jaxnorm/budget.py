"""Will a cell fit in memory? A rough upper estimate of a cell's parameters, optimizer state and activations,
checked against the memory of the devices before anything is written or compiled.

Without it a too-large sweep fails deep inside XLA (RESOURCE_EXHAUSTED, or an abort that kills the process
with status 134) after the run directory was created. The estimate counts float32 values: per seed the
parameters (embedding, positions, output head, L blocks of 4D² attention and 2DF MLP weights) four times
(parameters, gradients, two optimizer moments), and the activations a backward pass keeps per layer
(about 6D + 2F values per token and 2·H·T attention weights per query). Remat and XLA's fusion keep less,
so the estimate errs towards refusing only what could not fit.
"""

from __future__ import annotations

import os
from typing import Any

from jaxnorm.config import ConfigError

FLOAT_BYTES = 4
# The limit is this fraction of the devices' memory (the rest: XLA's workspace, the runtime, the host).
USABLE_FRACTION = 0.9


def cell_bytes(cell: Any) -> dict[str, int]:
    """{"parameters", "activations", "total"} bytes one cell's training needs at most (roughly)."""
    m, t = cell.model, cell.train
    d, f, depth, heads = m.d_model, m.d_ff, m.depth, m.num_heads
    vocab = max(m.vocab_size, 256)  # `train` sets it from the task; 256 bounds a byte-level corpus
    params = 2 * vocab * d + t.seq_len * d + depth * (4 * d * d + 2 * d * f + 8 * d)
    per_layer = t.batch_size * t.seq_len * (6 * d + 2 * f + 2 * heads * t.seq_len)
    parameters = FLOAT_BYTES * t.seeds * 4 * params
    activations = FLOAT_BYTES * t.seeds * (depth * per_layer + t.batch_size * t.seq_len * 2 * vocab)
    return {"parameters": parameters, "activations": activations, "total": parameters + activations}


def device_memory() -> tuple[int | None, str]:
    """(bytes, what) of memory the cells can use: the accelerators' memory limits added up, or, on a CPU,
    the host's physical memory. (None, ...) when it cannot be read."""
    import jax

    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        try:
            limits = [d.memory_stats()["bytes_limit"] for d in devices]
            return int(sum(limits)), f"{len(devices)}× {devices[0].device_kind}"
        except (TypeError, KeyError, AttributeError, RuntimeError):
            return None, "unknown"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory (CPU)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def check_memory(cells: list[Any]) -> None:
    """ConfigError naming the size flags if the largest cell's estimate exceeds the devices' memory."""
    if not cells:
        return
    biggest = max(cells, key=lambda c: cell_bytes(c)["total"])
    need = cell_bytes(biggest)
    have, what = device_memory()
    if have is None or need["total"] <= USABLE_FRACTION * have:
        return
    raise ConfigError(
        f"memory (--depths, --d-model, --d-ff, --batch-size, --seq-len, --seeds): cell {biggest.cell_id} needs "
        f"about {human(need['total'])} (parameters and optimizer state {human(need['parameters'])}, "
        f"activations {human(need['activations'])}), more than the {human(USABLE_FRACTION * have)} usable of "
        f"{what}; allowed: a smaller model, batch, sequence or fewer seeds")
