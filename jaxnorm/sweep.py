"""Run a sweep: expand the grid into cells, skip finished ones, shard over machines, write the run dir.

The one entry point a notebook needs:

>>> from jaxnorm.sweep import run, SweepSpec, preset
>>> spec = preset("quick").replace(depths=(2, 8))
>>> df = run(spec, "runs/notebook")          # one row per (cell, seed); rerunning resumes

`run` validates everything before it creates anything; it refuses a run directory that holds a
different spec (sweep.json is created exclusively and read back, so two specs started at once cannot both
win) or cells run under another setting; a finished cell whose files are intact is never recomputed, a
damaged one is redone; several processes can share one directory (each cell is locked while it trains); `shard=(i, n)` runs cells
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

from jaxnorm import budget, integrity, rundir
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


def validate(spec: SweepSpec, out_dir: str | Path, shard: tuple[int, int] = (0, 1), *,
             allow_mixed: bool = False) -> list[Cell]:
    """Every check `run` makes before writing anything; returns the expanded cells."""
    if not isinstance(spec, SweepSpec):
        raise ConfigError(f"spec: invalid value {type(spec).__name__}; allowed: a SweepSpec")
    check_shard(shard)
    rundir.check_out_dir(out_dir)
    check_data(spec)
    cells = expand(spec)
    rundir.check_sweep_json(Path(out_dir), spec)
    rundir.check_foreign_cells(Path(out_dir), [c.cell_id for c in cells])
    budget.check_memory(cells)
    check_setting(Path(out_dir), cells, allow_mixed)
    return cells


def check_setting(out_dir: Path, cells: list[Cell], allow_mixed: bool) -> None:
    """ConfigError (naming --allow-mixed) if a finished cell of this spec ran under another setting
    (rundir.run_setting: device count and kind, library versions, git commit) than this process has: its
    numbers and a new cell's would not be comparable. With `allow_mixed` the report lists which cells ran how."""
    if allow_mixed:
        return
    finished = [rundir.cell_dir(out_dir, c.cell_id) for c in cells if rundir.is_done(out_dir, c.cell_id)]
    if not finished:
        return
    now = rundir.run_setting()
    for path in finished:
        try:
            old = integrity.read_summary(path).get("setting")
        except integrity.DamagedCell:
            continue  # redone anyway
        diff = rundir.setting_differences(old or {}, now) if old is not None else []
        if diff:
            raise ConfigError(f"setting (--allow-mixed): finished cells in {str(out_dir)!r} ran under another "
                              f"setting than this run ({'; '.join(diff)}); allowed: the same setting (e.g. the "
                              f"same --cpu-devices), or --allow-mixed to mix them (the report says which cells ran how)")


def cell_problem(out_dir: Path, cell_id: str) -> str | None:
    """None if the cell is finished and intact (integrity.verify_cell), else why it must be (re)run."""
    path = rundir.cell_dir(out_dir, cell_id)
    if not (path / "summary.json").exists():
        return "not finished"
    try:
        integrity.verify_cell(path)
    except integrity.DamagedCell as e:
        return str(e)
    return None


def run_cell(cell: Cell, path: Path, *, progress: bool, pad_to: int | None = None, outputs=None) -> dict:
    """Train one cell and write its files (config.json first, summary.json last); returns the summary.
    `pad_to`: see `jaxnorm.trainer` (the same results, programs shared across depths). The caller holds the
    cell's lock (rundir.claim_cell). `outputs`: a jaxnorm.cell_outputs.CellOutputs (checkpoints, sinks)."""
    rundir.write_config(path, cell)
    from jaxnorm.trainer import train

    t0 = time.perf_counter()
    history = train(cell.model, cell.optim, cell.train.replace(progress=progress), cell.probe,
                    desc=cell.cell_id, pad_to=pad_to, keep_init=outputs is not None and outputs.keep_init)
    extra = outputs.before_summary(path, history) if outputs is not None else []
    return rundir.write_cell(path, cell, history, time.perf_counter() - t0, extra)


def run_claimed(cell: Cell, out_dir: Path, *, wait: bool, progress: bool, pad_to: int | None, outputs=None) -> bool:
    """Train `cell` unless another process is training it (False, when not `wait`) or has finished it.
    Under the cell's lock, so of several processes sharing a run directory exactly one trains each cell; a
    damaged cell's summary.json goes first, so that an interruption leaves it unfinished, not damaged."""
    with rundir.claim_cell(out_dir, cell.cell_id, wait=wait) as claimed:
        if not claimed:
            return False
        if cell_problem(out_dir, cell.cell_id) is not None:
            path = rundir.cell_dir(out_dir, cell.cell_id)
            (path / "summary.json").unlink(missing_ok=True)
            run_cell(cell, path, progress=progress, pad_to=pad_to, outputs=outputs)
    return True


def rebuild_results(out_dir: str | Path) -> pd.DataFrame:
    """results.csv from the summaries of the sweep's finished cells (any shard's), written atomically."""
    from jaxnorm import results

    df = results.load(out_dir)
    rundir.atomic_write_bytes(Path(out_dir) / "results.csv", df.to_csv(index=False).encode())
    return df


class ReportError(RuntimeError):
    """Drawing the figures or writing report.md failed; the message is one line (the results are saved)."""


def _figures_and_report(out_dir: Path) -> None:
    """Figures (jaxnorm.plots) and report.md (jaxnorm.report), once results.csv is rebuilt at the end of a
    sweep. A failure (a full disk, a figure bug) raises ReportError: results.csv and the cells are complete,
    every file is written atomically so no temporary is left, and rerunning the command draws them."""
    for module, function in (("jaxnorm.figures", "draw_all"), ("jaxnorm.report", "write_report")):
        try:
            getattr(importlib.import_module(module), function)(out_dir)
        except Exception as e:  # noqa: BLE001 — one line, whatever failed
            reason = (str(e).splitlines() or [""])[0]
            raise ReportError(f"report ({out_dir}): {module}.{function} failed: {type(e).__name__}: {reason}; "
                              f"the results are saved in {out_dir / 'results.csv'}; rerun the same command "
                              "to draw the figures and report") from e


def remove_dead_temps(out_dir: Path) -> None:
    """Temporary files that killed runs left beside results.csv, sweep.json and the figures."""
    for d in (out_dir, out_dir / "figures"):
        if d.is_dir():
            rundir.remove_dead_temps(d)


def init_profile_depth(spec: SweepSpec) -> int | None:
    """The depth every cell is padded to when the sweep measures initialisation only (steps = 0), else None.

    Such a cell runs each of its programs once, so compiling is nearly all it costs; padded to the grid's
    largest depth (jaxnorm.padding), the cells of one block at every depth share one set of programs (the
    `init` preset's time with and without: benchmarks/presets.md). Training cells are not padded: padded
    layers cost compute on every step."""
    return max(spec.depths) if spec.train.steps == 0 and len(spec.depths) > 1 else None


def grouped_across_depths(cells: list[Cell]) -> list[Cell]:
    """`cells` reordered so that those differing only in depth (or learning rate) are adjacent, keeping the
    grid's order otherwise: padded cells then reuse the few cached programs (`jaxnorm.programs`)."""
    first: dict[tuple, int] = {}
    key = lambda c: tuple(v for k, v in c.coords if k not in ("depth", "lr"))  # noqa: E731 (every other axis)
    for c in cells:
        first.setdefault(key(c), len(first))
    return sorted(cells, key=lambda c: first[key(c)])


def todo_cells(out_dir: Path, mine: list[Cell]) -> list[Cell]:
    """This process's cells that are not finished and intact; a damaged cell is named on stderr, one line each."""
    todo = []
    for cell in mine:
        problem = cell_problem(out_dir, cell.cell_id)
        if problem is None:
            continue
        if problem != "not finished":
            print(f"redo: {problem}", file=sys.stderr)
        todo.append(cell)
    return todo


def run(spec: SweepSpec, out_dir: str | Path, *, shard: tuple[int, int] = (0, 1),
        progress: bool = True, allow_mixed: bool = False, outputs=None) -> pd.DataFrame:
    """Run this shard's unfinished cells of `spec` into `out_dir`; returns `results.load(out_dir)`.

    KeyboardInterrupt stops after the cells that finished (results.csv is rebuilt first) and propagates;
    running the same call again resumes, redoing any cell whose files were damaged. Several processes may
    run the same spec into one directory at once: each cell is trained by one of them (rundir.claim_cell).
    ConfigError if the directory holds another spec or cells run under another setting (unless
    `allow_mixed`); ReportError if only the figures or report failed. `outputs`: a
    jaxnorm.cell_outputs.CellOutputs (checkpoints, metric sinks, a mirror), applied after each cell.
    """
    import jax
    from tqdm.auto import tqdm

    from jaxnorm import results

    out_dir = Path(out_dir)
    cells = validate(spec, out_dir, shard, allow_mixed=allow_mixed)
    if outputs is not None:
        outputs.check(out_dir)
    i, n = shard
    process, processes = jax.process_index(), jax.process_count()
    mine = cells[i::n][process::processes]
    use_compilation_cache()
    out_dir.mkdir(parents=True, exist_ok=True)
    rundir.create_sweep_json(out_dir, spec, [c.cell_id for c in cells])
    (out_dir / "cells").mkdir(exist_ok=True)
    remove_dead_temps(out_dir)
    todo = todo_cells(out_dir, mine)
    pad_to = init_profile_depth(spec)
    if pad_to is not None:
        todo = grouped_across_depths(todo)
    if progress:
        where = f"shard {i}/{n}" + (f", process {process}/{processes}" if processes > 1 else "")
        print(f"sweep: {len(cells)} cells, {where}: {len(mine)} cells, {len(mine) - len(todo)} already "
              f"done, {len(todo)} to run -> {out_dir}", file=sys.stderr)
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, file=sys.stderr)
    try:
        busy = []  # cells another process is training: waited for at the end, trained if it died
        for wait, queue in ((False, todo), (True, busy)):
            for cell in queue:
                bar.set_postfix_str(cell.cell_id)
                if run_claimed(cell, out_dir, wait=wait, progress=progress, pad_to=pad_to, outputs=outputs):
                    bar.update()
                    rebuild_results(out_dir)
                    if outputs is not None:
                        outputs.after_cell(out_dir)
                else:
                    busy.append(cell)
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
    if outputs is not None:
        outputs.after_cell(out_dir)
    return results.load(out_dir)
