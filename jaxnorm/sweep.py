"""Run a sweep: expand the grid into cells, skip finished ones, shard over machines, write the run dir.

The one entry point a notebook needs:

>>> from jaxnorm.sweep import run, SweepSpec, preset
>>> spec = preset("quick").replace(depths=(2, 8))
>>> df = run(spec, "runs/notebook")          # one row per (cell, seed); rerunning resumes

`run` validates everything before it creates anything; it refuses a run directory that holds a
different spec; a cell whose summary.json exists is never recomputed; `shard=(i, n)` runs cells
i, i+n, i+2n, ... of the expanded list so n machines can fill one run directory. Under
`jax.distributed` (several hosts) each JAX process takes every P-th cell of its shard and runs it on its own
devices: cells are independent, so no cell waits on another host; process 0 writes the figures and report
once every process has finished. The spec, the cell layout and what each file holds:
`jaxnorm.sweep_spec`, `jaxnorm.rundir`.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from jaxnorm import rundir
from jaxnorm.config import ConfigError
from jaxnorm.sweep_spec import PRESETS, Cell, SweepSpec, check_data, expand, parse_clip, preset  # noqa: F401

if TYPE_CHECKING:
    import pandas as pd

# JAX, pandas and the training code are imported where they are used, so that `validate` (the command
# line's checks of a spec) answers a bad flag in a fraction of a second instead of after loading JAX.

__all__ = ["run", "run_cell", "SweepSpec", "Cell", "preset", "PRESETS", "expand", "parse_clip", "check_shard"]


def use_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache unless the caller configured one.

    Compiling a cell's programs costs far more than running them at the sizes a CPU sweep uses, and
    identical programs recur: cells differing only in learning rate or clipping share their init, and
    reruns, resumed sweeps, shards and tests share everything. The cache lives in $JAXNORM_XLA_CACHE
    (default ~/.cache/jaxnorm/xla); set JAXNORM_XLA_CACHE="" to leave JAX's configuration alone."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get("JAXNORM_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxnorm", "xla"))
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """(i, n) with 0 <= i < n, else ConfigError naming --shard."""
    ok = (isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in shard))
    if not ok or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"shard (--shard): invalid value {shard!r}; allowed: i/n with integers 0 <= i < n")
    return shard


def validate(spec: SweepSpec, out_dir: str | Path, shard: tuple[int, int] = (0, 1)) -> list[Cell]:
    """Every check `run` makes before writing anything; returns the expanded cells."""
    if not isinstance(spec, SweepSpec):
        raise ConfigError(f"spec: invalid value {type(spec).__name__}; allowed: a SweepSpec")
    check_shard(shard)
    check_data(spec)
    cells = expand(spec)
    rundir.check_sweep_json(Path(out_dir), spec)
    return cells


def run_cell(cell: Cell, path: Path, *, progress: bool, pad_to: int | None = None) -> dict:
    """Train one cell and write its files (config.json first, summary.json last); returns the summary.
    `pad_to`: see `jaxnorm.train` (the same results, programs shared across depths)."""
    rundir.write_config(path, cell)
    from jaxnorm.train import train

    t0 = time.perf_counter()
    history = train(cell.model, cell.optim, cell.train.replace(progress=progress), cell.probe,
                    desc=cell.cell_id, pad_to=pad_to)
    return rundir.write_cell(path, cell, history, time.perf_counter() - t0)


def rebuild_results(out_dir: str | Path) -> pd.DataFrame:
    """results.csv from every summary.json present (any shard's), written atomically."""
    from jaxnorm import results

    df = results.load(out_dir)
    rundir.atomic_write_bytes(Path(out_dir) / "results.csv", df.to_csv(index=False).encode())
    return df


def _figures_and_report(out_dir: Path) -> None:
    """Figures (jaxnorm.plots) and report.md (jaxnorm.report), once results.csv is rebuilt at the end of a
    sweep. A failure there is reported on stderr and does not fail the sweep: the run directory is already
    complete."""
    for module, function in (("jaxnorm.plots", "draw_all"), ("jaxnorm.report", "write_report")):
        try:
            getattr(importlib.import_module(module), function)(out_dir)
        except Exception as e:  # noqa: BLE001 — results are on disk; a figure bug must not lose them
            print(f"warning: {module}.{function} failed: {type(e).__name__}: {e}", file=sys.stderr)


def init_profile_depth(spec: SweepSpec) -> int | None:
    """The depth every cell is padded to when the sweep measures initialisation only (steps = 0), else None.

    Such a cell runs each of its programs once, so compiling is nearly all it costs; padded to the grid's
    largest depth (jaxnorm.padding), the cells of one block at every depth share one set of programs (on a
    2-core CPU the `init` preset went from 12 minutes to 4). Training cells are not padded: padded layers
    cost compute on every step."""
    return max(spec.depths) if spec.train.steps == 0 and len(spec.depths) > 1 else None


def grouped_across_depths(cells: list[Cell]) -> list[Cell]:
    """`cells` reordered so that those differing only in depth (or learning rate) are adjacent, keeping the
    grid's order otherwise: padded cells then reuse the few cached programs (`jaxnorm.programs`)."""
    first: dict[tuple, int] = {}
    key = lambda c: (c.block, c.norm, c.attention, c.optimizer, c.clip)  # noqa: E731
    for c in cells:
        first.setdefault(key(c), len(first))
    return sorted(cells, key=lambda c: first[key(c)])


def run(spec: SweepSpec, out_dir: str | Path, *, shard: tuple[int, int] = (0, 1),
        progress: bool = True) -> pd.DataFrame:
    """Run this shard's unfinished cells of `spec` into `out_dir`; returns `results.load(out_dir)`.

    KeyboardInterrupt stops after the cells that finished (results.csv is rebuilt first) and propagates;
    running the same call again resumes.
    """
    import jax
    from tqdm.auto import tqdm

    from jaxnorm import results

    out_dir = Path(out_dir)
    cells = validate(spec, out_dir, shard)
    i, n = shard
    process, processes = jax.process_index(), jax.process_count()
    mine = cells[i::n][process::processes]
    use_compilation_cache()
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    if process == 0 and not (out_dir / "sweep.json").exists():
        rundir.write_sweep_json(out_dir, spec, [c.cell_id for c in cells])
    todo = [c for c in mine if not rundir.is_done(out_dir, c.cell_id)]
    pad_to = init_profile_depth(spec)
    if pad_to is not None:
        todo = grouped_across_depths(todo)
    if progress:
        where = f"shard {i}/{n}" + (f", process {process}/{processes}" if processes > 1 else "")
        print(f"sweep: {len(cells)} cells, {where}: {len(mine)} cells, {len(mine) - len(todo)} already "
              f"done, {len(todo)} to run -> {out_dir}", file=sys.stderr)
    bar = tqdm(todo, desc="cells", unit="cell", disable=not progress, file=sys.stderr)
    try:
        for cell in bar:
            bar.set_postfix_str(cell.cell_id)
            run_cell(cell, rundir.cell_dir(out_dir, cell.cell_id), progress=progress, pad_to=pad_to)
            rebuild_results(out_dir)
    finally:
        bar.close()
        rebuild_results(out_dir)  # also on KeyboardInterrupt: results.csv reflects every finished cell
    if processes > 1:  # every process's cells are on disk before process 0 draws from them
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxnorm.sweep.run: all cells written")
        if process != 0:
            return results.load(out_dir)
        rebuild_results(out_dir)
    _figures_and_report(out_dir)
    return results.load(out_dir)
