"""Which cells can train side by side in one compiled program, and how many at once.

Two cells share a program when they differ only in data the program takes as arguments:
- depth, when both are padded to one stack (jaxnorm.padding: the active depth is an unbatched argument);
- learning rate, weight decay, clip threshold and seeds, which are per-run data in the train state
  (jaxnorm.step.run_hparams): cells differing only in these are *packed*, their runs vmapped together.
A cell without clipping packs with cells clipping by one kind as an infinite threshold.

`pack_key` says which cells pack; `program_optim` is the optimizer config the packed program is built from;
`packs` splits a sweep's cells into packs of at most `width` runs; `program_key` says which packs run the
same programs (jaxnorm.compile_ahead compiles each once); `default_width` picks the width for the device.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

from jaxnorm.config import ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig

# Per-run data: these OptimConfig / TrainConfig fields never shape a program.
RUN_DATA_OPTIM = ("lr", "weight_decay", "clip_value")
RUN_DATA_TRAIN = ("seed", "seeds", "progress")  # progress: a display switch, not part of a run

# On a CPU, runs packed together only batch the same arithmetic (no idle units to fill), and cells differing
# only in per-run data share compiled programs packed or not: on a 2-core CPU, 4 learning rates x 2 seeds at
# the quick preset's width ran 300 steps in 11 s packed against 8 s one cell at a time (warm cache; cold, the
# two were within noise). So a CPU trains one cell at a time unless --pack says otherwise.
CPU_PACK_RUNS = 1


def _optim_structure(optim_cfg: OptimConfig) -> OptimConfig:
    """`optim_cfg` without its per-run data (and with clipping kept only as a kind)."""
    return optim_cfg.replace(**{f: getattr(OptimConfig(), f) for f in RUN_DATA_OPTIM})


def _train_structure(train_cfg: TrainConfig) -> TrainConfig:
    """`train_cfg` without its per-run data."""
    return train_cfg.replace(**{f: getattr(TrainConfig(), f) for f in RUN_DATA_TRAIN})


def pack_key(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig, probe_cfg: ProbeConfig,
             *, share_depth: bool) -> Hashable:
    """Cells with equal keys may be packed (the clip kind is compared separately: see `program_optim`).
    `share_depth`: cells of every depth share programs (padded), so depth is not part of the key."""
    model = model_cfg.replace(depth=1) if share_depth else model_cfg
    return model, _optim_structure(optim_cfg).replace(clip="none"), _train_structure(train_cfg), probe_cfg


def program_optim(optims: Sequence[OptimConfig]) -> OptimConfig:
    """The optimizer config a pack of runs is compiled from: their shared structure, clipping by the one
    kind any of them clips by. ConfigError if they differ in anything else."""
    kinds = sorted({o.clip for o in optims} - {"none"})
    if len(kinds) > 1:
        raise ConfigError(f"pack: invalid value clip kinds {kinds}; allowed: one clip kind per pack (and none)")
    shapes = {_optim_structure(o).replace(clip="none") for o in optims}
    if len(shapes) > 1:
        raise ConfigError("pack: invalid value optimizer configs that differ beyond "
                          f"{', '.join(RUN_DATA_OPTIM)} and clipping; allowed: cells that differ only in those")
    return _optim_structure(optims[0]).replace(clip=kinds[0] if kinds else "none")


def program_key(pack: Sequence[Any], *, share_depth: bool) -> Hashable:
    """What the compiled programs of `pack` (a list of jaxnorm.sweep_spec.Cell, as `packs` makes them) depend
    on: packs with equal keys run the same programs. Their pack key, the clip kind the program is built with,
    and the number of runs, which sizes the vmapped run axis."""
    first, optim = pack[0], program_optim([c.optim for c in pack])
    key = pack_key(first.model, optim, first.train, first.probe, share_depth=share_depth)
    return key, optim.clip, sum(c.train.seeds for c in pack)


def check_train_configs(trains: Sequence[TrainConfig]) -> None:
    """ConfigError unless the runs' train configs differ only in per-run data (seed, seeds)."""
    if len({_train_structure(t) for t in trains}) > 1:
        raise ConfigError("pack: invalid value train configs that differ beyond seed and seeds; allowed: "
                          "cells that differ only in those")


def packs(cells: Sequence[Any], width: int, *, share_depth: bool) -> list[list[Any]]:
    """`cells` (jaxnorm.sweep_spec.Cell) split into packs of cells with one pack key, one depth and one clip
    kind (besides none), at most `width` runs each (a cell with more seeds than `width` is a pack of its own).
    Packs of one model structure come out adjacent (they reuse its programs), in the cells' order of first
    appearance otherwise."""
    groups: dict[Hashable, dict[int, dict[str, list[Any]]]] = {}
    for c in cells:
        key = pack_key(c.model, c.optim, c.train, c.probe, share_depth=share_depth)
        groups.setdefault(key, {}).setdefault(c.model.depth, {}).setdefault(c.optim.clip, []).append(c)
    out: list[list[Any]] = []
    for by_depth in groups.values():
        for by_kind in by_depth.values():
            # A pack mixes "none" with at most one other kind: the unclipped cells join the first such kind.
            kinds = [k for k in by_kind if k != "none"]
            if "none" in by_kind and kinds:
                by_kind[kinds[0]] = by_kind.pop("none") + by_kind[kinds[0]]
            for members in by_kind.values():
                pack: list[Any] = []
                for c in members:
                    if pack and sum(m.train.seeds for m in pack) + c.train.seeds > width:
                        out.append(pack)
                        pack = []
                    pack.append(c)
                out.append(pack)
    return out


def default_width(cells: Sequence[Any]) -> int:
    """Runs per pack for this device: on a CPU `CPU_PACK_RUNS` (a cell's seeds still run together); on an
    accelerator as many runs as its
    memory holds (jaxnorm.budget's estimate for the deepest cell's run, which a padded pack runs at), up to
    the whole grid."""
    import jax

    from jaxnorm import budget

    total = sum(c.train.seeds for c in cells) or 1
    if jax.default_backend() == "cpu" or not cells:
        return min(CPU_PACK_RUNS, total)
    per_run = max(budget.cell_bytes(c)["total"] / c.train.seeds for c in cells)
    have, _ = budget.device_memory()
    if have is None:
        return min(CPU_PACK_RUNS, total)
    return max(1, min(total, int(budget.USABLE_FRACTION * have // max(per_run, 1.0))))
