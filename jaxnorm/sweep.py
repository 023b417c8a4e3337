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

import contextlib
import functools
import importlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jaxnorm import budget, integrity, packing, rundir
from jaxnorm.compile_ahead import CompileAhead
from jaxnorm.config import ConfigError
from jaxnorm.sweep_spec import PRESETS, Cell, SweepSpec, check_data, expand, parse_clip, preset  # noqa: F401

if TYPE_CHECKING:
    import pandas as pd

    from jaxnorm.time_split import TimeSplit

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


def run_cell(cell: Cell, path: Path, *, progress: bool, pad_to: int | None = None, outputs=None,
             split: TimeSplit | None = None) -> dict:
    """Train one cell and write its files (config.json first, summary.json last); returns the summary.
    `pad_to`: see `jaxnorm.trainer` (the same results, programs shared across depths). The caller holds the
    cell's lock (rundir.claim_cell). `outputs`: a jaxnorm.cell_outputs.CellOutputs (checkpoints, sinks)."""
    return run_pack([cell], path.parent.parent, progress=progress, pad_to=pad_to, outputs=outputs, split=split)[0]


def run_pack(cells: list[Cell], out_dir: Path, *, progress: bool, pad_to: int | None = None, outputs=None,
             split: TimeSplit | None = None) -> list[dict]:
    """Train `cells` (one pack: jaxnorm.packing) side by side and write each one's files as if it had run
    alone (config.json first, summary.json last); returns their summaries. The caller holds their locks.
    A cell's recorded wall time is its share of the pack's."""
    from jaxnorm.trainer import train_pack

    paths = [rundir.cell_dir(out_dir, c.cell_id) for c in cells]
    for cell, path in zip(cells, paths):
        (path / "summary.json").unlink(missing_ok=True)  # a damaged cell: unfinished, not damaged, if stopped
        rundir.write_config(path, cell)
    t0 = time.perf_counter()
    members = [(c.optim, c.train.replace(progress=progress)) for c in cells]
    desc = cells[0].cell_id if len(cells) == 1 else f"{cells[0].cell_id} +{len(cells) - 1} packed"
    histories = train_pack(cells[0].model, members, cells[0].probe, desc=desc, pad_to=pad_to,
                           keep_init=outputs is not None and outputs.keep_init)
    share = (time.perf_counter() - t0) / len(cells)
    summaries = []
    with split.part("writing") if split is not None else contextlib.nullcontext():
        for cell, path, history in zip(cells, paths, histories):
            extra = outputs.before_summary(path, history) if outputs is not None else []
            summaries.append(rundir.write_cell(path, cell, history, share, extra))
    return summaries


def run_claimed(pack: list[Cell], out_dir: Path, *, wait: bool, progress: bool, pad_to: int | None, outputs=None,
                split: TimeSplit | None = None) -> list[Cell]:
    """Train the cells of `pack` that need it, unless another process is training them; returns those
    another process holds (empty when `wait`). Under each cell's lock, so of several processes sharing a run
    directory exactly one trains each cell."""
    with contextlib.ExitStack() as locks:
        mine, others = [], []
        for cell in pack:
            (mine if locks.enter_context(rundir.claim_cell(out_dir, cell.cell_id, wait=wait)) else others).append(cell)
        todo = [c for c in mine if cell_problem(out_dir, c.cell_id) is not None]
        if len(todo) == 1:
            run_cell(todo[0], rundir.cell_dir(out_dir, todo[0].cell_id), progress=progress, pad_to=pad_to,
                     outputs=outputs, split=split)
        elif todo:
            run_pack(todo, out_dir, progress=progress, pad_to=pad_to, outputs=outputs, split=split)
    return others


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


def shared_depth(spec: SweepSpec, share: bool = True) -> int | None:
    """The depth every cell is padded to: the grid's largest, so that the cells of one model structure at
    every depth share one set of compiled programs (jaxnorm.padding: the same results, the inactive layers
    skipped). None when the grid has one depth, or with `share` False (one set of programs per cell, kept to
    measure what sharing saves: scripts/bench_sweep.py)."""
    return max(spec.depths) if share and len(spec.depths) > 1 else None


def pack_cells(cells: list[Cell], *, share: bool = True, pack: int | None = None) -> list[list[Cell]]:
    """`cells` in packs trained side by side (jaxnorm.packing), packs of one model structure adjacent so that
    they reuse its programs; `pack`: runs per pack (None: the device's default; 1 with `share` False)."""
    width = (pack or packing.default_width(cells)) if share else 1
    return packing.packs(cells, width, share_depth=share)


def compile_pack_ahead(pack: list[Cell], pad_to: int | None) -> None:
    """Compile the programs `run_pack` will run for `pack`, running nothing (jaxnorm.compile_ahead)."""
    from jaxnorm.trainer import compile_pack_ahead as compile_members

    compile_members(pack[0].model, [(c.optim, c.train) for c in pack], pack[0].probe, pad_to=pad_to)


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
        progress: bool = True, allow_mixed: bool = False, outputs=None, share: bool = True,
        pack: int | None = None, compile_ahead: bool = True) -> pd.DataFrame:
    """Run this shard's unfinished cells of `spec` into `out_dir`; returns `results.load(out_dir)`.

    KeyboardInterrupt stops after the cells that finished (results.csv is rebuilt first) and propagates;
    running the same call again resumes, redoing any cell whose files were damaged. Several processes may
    run the same spec into one directory at once: each cell is trained by one of them (rundir.claim_cell).
    ConfigError if the directory holds another spec or cells run under another setting (unless
    `allow_mixed`); ReportError if only the figures or report failed. `outputs`: a
    jaxnorm.cell_outputs.CellOutputs (checkpoints, metric sinks, a mirror), applied after each cell.
    `share`: cells of every depth share compiled programs and cells differing only in learning rate, weight
    decay, clip threshold or seeds train packed, `pack` runs at most (None: chosen for the device); False
    compiles one set of programs per cell (the same results; for measuring what sharing saves).
    `compile_ahead`: compile the next model structure's programs on a background thread while the current
    one trains (jaxnorm.compile_ahead; the same programs, so the same results). The returned
    frame's `attrs["time"]` says where this call's time went (compiling, running, writing, figures).
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
    if pack is not None and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise ConfigError(f"pack (--pack): invalid value {pack!r}; allowed: an integer >= 1")
    from jaxnorm.time_split import TimeSplit

    split = TimeSplit()
    pad_to = shared_depth(spec, share)
    packs = pack_cells(todo, share=share, pack=pack)
    if progress:
        where = f"shard {i}/{n}" + (f", process {process}/{processes}" if processes > 1 else "")
        print(f"sweep: {len(cells)} cells, {where}: {len(mine)} cells, {len(mine) - len(todo)} already "
              f"done, {len(todo)} to run in {len(packs)} packs -> {out_dir}", file=sys.stderr)
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, file=sys.stderr)
    ahead = CompileAhead(packs, functools.partial(packing.program_key, share_depth=share),
                         functools.partial(compile_pack_ahead, pad_to=pad_to), enabled=compile_ahead)
    try:
        busy: list[Cell] = []  # cells another process is training: waited for at the end, trained if it died
        for wait, queue in ((False, packs), (True, [[c] for c in busy])):
            for index, group in enumerate(queue):
                if not wait:
                    with split.part("compiling ahead"):
                        ahead.before(index)
                bar.set_postfix_str(group[0].cell_id + (f" +{len(group) - 1}" if len(group) > 1 else ""))
                others = run_claimed(group, out_dir, wait=wait, progress=progress, pad_to=pad_to, outputs=outputs,
                                     split=split)
                busy.extend(others)
                bar.update(len(group) - len(others))
                with split.part("writing"):
                    rebuild_results(out_dir)
                    if outputs is not None:
                        outputs.after_cell(out_dir)
    finally:
        ahead.close()
        bar.close()
        rebuild_results(out_dir)  # also on KeyboardInterrupt: results.csv reflects every finished cell
    if processes > 1:  # every process's cells are on disk before process 0 draws from them
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxnorm.sweep.run: all cells written")
        if process != 0:
            return results.load(out_dir)
        rebuild_results(out_dir)
    with split.part("figures"):
        _figures_and_report(out_dir)
    if outputs is not None:
        outputs.after_cell(out_dir)
    df = results.load(out_dir)
    df.attrs["time_s"] = split.seconds()  # as numbers (scripts/project_grid.py)
    df.attrs["time"] = split.line(df.attrs["time_s"])  # the same split as the line the command prints last
    return df
