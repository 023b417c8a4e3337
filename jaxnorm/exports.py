"""Metric sinks (`--log tensorboard,wandb`): finished cells copied from the run directory into TensorBoard / W&B.

The run directory stays the source of truth: a sink is written only from a finished cell's files
(metrics.jsonl, layers.npz through `jaxnorm.sink_points`), after the cell is done, never from the training
loop. `<out>/exports/<sink>.json` records which cells a sink has received (each with the sha256 of its
summary.json), so a resumed, sharded or repeated sweep sends every finished cell exactly once: the cells
finished before an interruption are not sent again, the ones finished by another process or shard are sent
by whichever process exports next, and a cell redone after damage is sent again (TensorBoard replaces the
cell's events; W&B gets a run of another id). One process exports into a sink at a time (a lock in
`<out>/.locks/`); the marker is rewritten atomically after each cell.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

from jaxnorm import integrity, rundir

SINKS = {"tensorboard": "jaxnorm.sink_tensorboard", "wandb": "jaxnorm.sink_wandb"}
FOLDER = "exports"


def parse_sinks(value: Any) -> tuple[str, ...]:
    """'tensorboard,wandb' (or a list of names; '' for none) -> the sink names, checked; ValueError naming --log."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")] if value.strip() else []
    else:
        names = list(value or ())
    if not all(n in SINKS for n in names):
        raise ValueError(f"log (--log): invalid value {value!r}; allowed: comma-separated names from "
                         f"{', '.join(SINKS)}")
    return tuple(dict.fromkeys(names))


def check_available(sinks: tuple[str, ...]) -> None:
    """ImportError (one line naming the extra to install) if a sink's library is missing."""
    for name in sinks:
        importlib.import_module(SINKS[name]).check_available()


def sweep_name(out_dir: Path) -> str:
    """`<out folder name>-<8 hex digits of sweep.json's spec>`: one name for every shard and resume of a sweep."""
    spec = json.loads((Path(out_dir) / "sweep.json").read_bytes())["spec"]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    return f"{Path(out_dir).resolve().name}-{digest}"


def marker_path(out_dir: Path, sink: str) -> Path:
    return Path(out_dir) / FOLDER / f"{sink}.json"


def read_marker(out_dir: Path, sink: str) -> dict[str, str]:
    """cell id -> sha256 of the summary.json the sink received ({} if nothing was exported, or unreadable)."""
    try:
        cells = json.loads(marker_path(out_dir, sink).read_bytes())["cells"]
        return {str(k): str(v) for k, v in cells.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _finished(out_dir: Path) -> dict[str, str]:
    """sweep.json's finished, intact cells -> the sha256 of their summary.json."""
    from jaxnorm.results import listed_cells

    done = {}
    for cell_id in listed_cells(out_dir) or []:
        path = rundir.cell_dir(out_dir, cell_id)
        try:
            integrity.check_sizes(path)
            done[cell_id] = integrity.file_record(path / "summary.json")["sha256"]
        except (integrity.DamagedCell, OSError):
            continue
    return done


def export(out_dir: str | Path, sinks: tuple[str, ...] | str) -> dict[str, list[str]]:
    """Send every finished cell a sink has not received yet; returns sink -> the cell ids sent now."""
    from jaxnorm.sink_points import cell_points

    out_dir, sinks = Path(out_dir), parse_sinks(sinks)
    sent: dict[str, list[str]] = {}
    if not sinks:
        return sent
    check_available(sinks)
    done = _finished(out_dir)
    (out_dir / FOLDER).mkdir(exist_ok=True)
    for sink in sinks:
        sent[sink] = []
        with rundir.claim_cell(out_dir, f"export-{sink}", wait=True):
            marker = read_marker(out_dir, sink)
            todo = [c for c, sha in done.items() if marker.get(c) != sha]
            if not todo:
                continue
            writer = importlib.import_module(SINKS[sink]).Writer(out_dir, sweep_name(out_dir))
            try:
                for cell_id in todo:
                    config = json.loads((rundir.cell_dir(out_dir, cell_id) / "config.json").read_bytes())
                    writer.write_cell(cell_id, config, cell_points(out_dir, cell_id), version=done[cell_id])
                    marker[cell_id] = done[cell_id]
                    rundir.atomic_write_json(marker_path(out_dir, sink), {"cells": marker})
                    sent[sink].append(cell_id)
            finally:
                writer.close()
    return sent
