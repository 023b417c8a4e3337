"""What a sweep asks for: `SweepSpec` (a grid of cells over shared base configs), its presets, and
`expand(spec) -> list[Cell]`. The grid's axes, and everything about each, are the table in `jaxnorm.axes`.

A cell is one training run (S seeds vmapped together). Its `cell_id` is a readable prefix plus the
first 8 hex digits of the sha256 of the canonical JSON of its resolved configs, so the same cell gets
the same id in every process, on every machine, in every rerun: that is what lets a killed sweep
resume and several machines share one run directory.

Everything is validated when the spec is constructed: every cell's configs are built, so an invalid
combination (batchnorm with the causal `lm` task, d_model not divisible by num_heads, ...) fails
before any cell runs. Error messages are one line, name the field (and its CLI flag) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any

from jaxnorm import axes
from jaxnorm.axes import parse_clip, spec_error  # noqa: F401 (parse_clip re-exported for jaxnorm.sweep)
from jaxnorm.config import (
    BLOCKS, LIMITS, TEXT_TASKS, ConfigError, task_model_config,
    ModelConfig, OptimConfig, ProbeConfig, TrainConfig, from_dict, to_dict,
)

# The base configs a spec applies its axes to, with their types.
BASES = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "probe": ProbeConfig}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: its axis values, its resolved configs and its stable id. An axis value reads as an
    attribute of its name (`cell.depth`, `cell.lr`; the axes: jaxnorm.axes)."""

    coords: tuple[tuple[str, Any], ...]  # (axis name, value), in grid order
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    probe: ProbeConfig
    cell_id: str

    def __getattr__(self, name: str) -> Any:
        # reached only for names that are not fields; __dict__ directly, so that a half-built copy cannot recurse
        for axis, value in self.__dict__.get("coords", ()):
            if axis == name:
                return value
        raise AttributeError(f"Cell has no attribute or axis {name!r}")

    def axes(self) -> dict[str, Any]:
        """The grid coordinates: {depth, block, norm, attention, optimizer, clip, lr} (the axes' names)."""
        return dict(self.coords)

    def configs(self) -> dict[str, Any]:
        return {"model": to_dict(self.model), "optim": to_dict(self.optim), "train": to_dict(self.train),
                "probe": to_dict(self.probe)}


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: the same bytes for the same data in every process."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def make_cell_id(coords: dict[str, Any], configs: dict[str, Any]) -> str:
    """`L8-pre_ln-layernorm-dot-adamw-none-lr0.001-3f9a2c1b`: each axis's value as its `id_text` writes it, in
    grid order, then 8 hex digits of the sha256 of the configs. KeyError if `coords` lacks an axis."""
    digest = hashlib.sha256(canonical_json(configs).encode()).hexdigest()[:8]
    return "-".join([*(a.id_text(coords[a.name]) for a in axes.axes()), digest])


class SweepSpec:
    """A grid of cells: the product of its axes' values, applied on top of the base configs.

    One keyword per axis of jaxnorm.axes (`depths`, `blocks`, `norms`, `attentions`, `optimizers`, `clips`,
    `lrs`: the values to sweep; a lone value or a list is taken as a tuple; the axis's default when left out),
    plus `seeds`, models per cell trained together (vmapped) from `train.seed`, `train.seed + 1`, ...; and
    the base `model`, `optim`, `train` and `probe` configs (the axes overwrite their own fields).

    Blocks without a norm layer (rezero, no_norm) ignore `norms`: they get one cell with norm "none" per point
    of the other axes instead of one identical cell per norm. The sweep's own progress bar replaces the
    per-cell `train.progress` flag, which is not part of a cell's identity. Immutable, compared and hashed by
    value; every field is validated on construction (and every cell's configs built), so a bad value fails here.
    """

    def __init__(self, *, seeds: int = 1, model: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
                 train: TrainConfig = TrainConfig(), probe: ProbeConfig = ProbeConfig(), **grid: Any) -> None:
        unknown = sorted(set(grid) - set(axes.fields()))
        if unknown:
            known = sorted([*axes.fields(), "seeds", *BASES])
            raise ConfigError(f"SweepSpec: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = {a.field: grid.get(a.field, a.default) for a in axes.axes()}
        for field, value in values.items():  # lists from JSON or a notebook become tuples, so specs hash and compare
            lone = isinstance(value, (str, bytes)) or not isinstance(value, Iterable)
            object.__setattr__(self, field, (value,) if lone else tuple(value))
        object.__setattr__(self, "_fields", tuple(values))
        object.__setattr__(self, "seeds", seeds)
        for name, value in (("model", model), ("optim", optim), ("train", train), ("probe", probe)):
            if not isinstance(value, BASES[name]):
                raise ConfigError(f"SweepSpec.{name}: invalid value {value!r}; allowed: a {BASES[name].__name__}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "train", self.train.replace(progress=False))
        self._check_axes()
        for axis in axes.axes():
            object.__setattr__(self, axis.field, merge_duplicates(axis.field, getattr(self, axis.field)))
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= LIMITS["seeds"]:
            raise spec_error("seeds", "--seeds", self.seeds, f"an integer >= 1 and <= {LIMITS['seeds']}")
        expand(self)  # builds (and so validates) every cell's configs

    def _check_axes(self) -> None:
        for axis in axes.axes():
            values = getattr(self, axis.field)
            if not values:
                raise axis.error(values, "a non-empty list")
            for v in values:
                if not axis.valid(v):
                    raise axis.error(v)

    def as_dict(self) -> dict[str, Any]:
        """The fields as keyword arguments (the axes in grid order, then seeds and the base configs)."""
        return {**{f: getattr(self, f) for f in self._fields}, "seeds": self.seeds,
                **{name: getattr(self, name) for name in BASES}}

    def replace(self, **changes: Any) -> "SweepSpec":
        return SweepSpec(**{**self.as_dict(), **changes})

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r} of a SweepSpec")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SweepSpec) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        return f"SweepSpec({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"

    @property
    def num_cells(self) -> int:
        return len(expand(self))


def merge_duplicates(field: str, values: tuple) -> tuple:
    """`values` of the axis whose spec field is `field`, without repeats, the first spelling kept: values equal
    after the axis's normalisation (a clip `global_norm:1` and `global_norm:1.0`, learning rates 1e-3 and 0.001)
    would train identical cells."""
    key = axes.by_field(field).same
    seen, kept = set(), []
    for v in values:
        if key(v) not in seen:
            seen.add(key(v))
            kept.append(v)
    return tuple(kept)


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """The spec as plain JSON data (tuples become lists)."""
    data = spec.as_dict()
    data.update({name: to_dict(data[name]) for name in BASES})
    return json.loads(json.dumps(data))


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    """Inverse of `spec_to_dict`; unknown keys are refused with the list of known ones."""
    data = dict(data)
    for name, cls in BASES.items():
        if name in data:
            data[name] = from_dict(cls, data[name])
    return SweepSpec(**data)


def _cell(spec: SweepSpec, coords: dict[str, Any]) -> Cell:
    """The cell at `coords` (axis name -> resolved value): each axis sets its config fields on the base configs."""
    changes: dict[str, dict[str, Any]] = {name: {} for name in BASES}
    for axis in axes.axes():
        for part, fields in axis.sets(coords[axis.name]).items():
            changes[part].update(fields)
    try:
        train = spec.train.replace(seeds=spec.seeds, progress=False, **changes["train"])
        model = task_model_config(spec.model.replace(**changes["model"]), train)
        optim = spec.optim.replace(**changes["optim"])
        probe = spec.probe.replace(**changes["probe"])
    except ConfigError as e:
        where = " ".join(f"{k}={v}" for k, v in coords.items())
        raise ConfigError(f"{e} (task={spec.train.task}, cell {where})") from None
    configs = {"model": to_dict(model), "optim": to_dict(optim), "train": to_dict(train), "probe": to_dict(probe)}
    return Cell(coords=tuple(coords.items()), model=model, optim=optim, train=train, probe=probe,
                cell_id=make_cell_id(coords, configs))


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, in a fixed order: the first axis of jaxnorm.axes (depth) slowest, the last (lr)
    fastest, so that neighbouring cells share compiled programs. Cells that resolve to the same configs (a
    norm-free block under several norms) are one cell."""
    cells, seen = [], set()
    table = axes.axes()
    for point in itertools.product(*(getattr(spec, a.field) for a in table)):
        coords: dict[str, Any] = {}
        for axis, value in zip(table, point):
            coords[axis.name] = axis.resolve(value, coords)
        cell = _cell(spec, coords)
        if cell.cell_id not in seen:
            seen.add(cell.cell_id)
            cells.append(cell)
    return cells


def check_data(spec: SweepSpec) -> None:
    """The task's data can be prepared (an unreadable or too short --text-file fails here, before
    anything is written); raises ConfigError or jaxnorm.data.DataError. Reads a text task's corpus once."""
    from jaxnorm.data import make_dataset

    if spec.train.task in TEXT_TASKS:
        make_dataset(spec.train)


# --- presets -----------------------------------------------------------------------------------------


def _quick() -> SweepSpec:
    """`python -m experiments.depth_sweep` (the default): 9 cells × 2 seeds on the `reverse` task.

    Post-LN vs Pre-LN vs ReZero at depths 2, 8, 24 (d_model 32, 600 steps, adamw at one lr, 1e-2, 50
    warmup steps then cosine decay). Calibrated so that "trains" and "fails" look different: reversal is
    learnt in a sudden drop after a plateau near 20% token accuracy, which at lr 3e-3 even depth 2 had not
    left by step 600, while at 1e-2 every cell that trains ends at ~100% accuracy with the loss near 0 (at
    depth 2 Pre-LN and Post-LN get there by step ~200, at depth 24 Pre-LN and ReZero by ~400). About a
    quarter of its cold time is compiling (one set of programs per placement), which a rerun or resumed
    sweep skips (JAX's persistent compilation cache); measured times: benchmarks/presets.md. Shows depth
    effects: Post-LN trains at depth 2 but stays near chance at depth 8 and at chance loss (≈ ln 16) at depth 24, where its end-of-training gradients vanish towards the
    input (first/last layer ratio ~2e-8), while Pre-LN and ReZero reach 100% at every depth. Add `--blocks
    post_ln,pre_ln,deepnorm,rezero --optimizers adamw,rmsprop --clip none,global_norm:1.0` for the full
    small comparison (48 cells).
    """
    return SweepSpec(
        depths=(2, 8, 24), blocks=("post_ln", "pre_ln", "rezero"), norms=("layernorm",),
        attentions=("dot",), optimizers=("adamw",), clips=("none",), lrs=(1e-2,),
        seeds=2,
        model=ModelConfig(d_model=32, num_heads=2, d_ff=64, remat=False),
        optim=OptimConfig(schedule="warmup_cosine", warmup_steps=50),
        train=TrainConfig(task="reverse", steps=600, batch_size=16, seq_len=16, log_every=10, eval_every=60,
                          eval_batches=2),
        probe=ProbeConfig(probe_every=90, power_iters=10, hutchinson_samples=4, probe_batch=2),
    )


def _paper() -> SweepSpec:
    """`python -m experiments.depth_sweep --preset paper [--shard i/n]`: the full comparison, for GPU/TPU.

    Char-level LM (causal) on the built-in corpus, depths 2..128, the main norm placements with the
    causal-safe norms, four optimizers, with and without clipping, three learning rates (so
    `results.lr_sensitivity` applies), 3 seeds: 2,352 cells, most of the time in depths ≥ 32. Split it with
    `--shard i/n` over machines (the time it takes: benchmarks/presets.md).
    Shows where in depth each placement loses gradient, which placements/optimizers diverge at which
    depth and learning rate, and how LR sensitivity grows with depth (Wortsman et al. 2023).
    """
    return SweepSpec(
        depths=(2, 4, 8, 16, 32, 64, 128),
        blocks=("post_ln", "pre_ln", "sandwich", "deepnorm", "rezero", "admin", "b2t", "no_norm"),
        norms=("layernorm", "rmsnorm"), attentions=("dot",), optimizers=("adamw", "rmsprop", "adam", "lion"),
        clips=("none", "global_norm:1.0"), lrs=(3e-4, 1e-3, 3e-3), seeds=3,
        model=ModelConfig(d_model=128, num_heads=4, d_ff=512, activation="gelu"),
        optim=OptimConfig(schedule="warmup_cosine", warmup_steps=200),
        train=TrainConfig(task="lm", steps=2000, batch_size=64, seq_len=128, log_every=20, eval_every=500),
        probe=ProbeConfig(probe_every=500),
    )


def _init() -> SweepSpec:
    """`python -m experiments.init_gradients` (= `--preset init`): gradients at initialisation only.

    Every block at depths 2..64 on the `mlm` task (BERT-style masked characters of the built-in corpus, a
    bidirectional encoder on real text, seq_len 32), TrainConfig.steps = 0: one measured forward/backward
    pass and the Jacobian probes per cell, no training (78 cells × 2 seeds). Each program of such a cell
    runs once, so compiling is nearly all the cost; the sweep therefore pads every cell to depth 64
    (jaxnorm.padding: the same results, up to float32 rounding) and the six depths of a block share one set
    of programs (compiled at XLA's lowest CPU backend level; `python scripts/bench_compile.py` splits them).
    Measured times: benchmarks/presets.md. For a quicker look, narrow the grid (`--blocks post_ln,pre_ln
    --depths 2,8,32`), or use the explore notebook (gradient norms only, one program per block). Shows the
    per-layer gradient and Jacobian profile each placement starts from.
    """
    return SweepSpec(
        depths=(2, 4, 8, 16, 32, 64), blocks=BLOCKS, norms=("layernorm",), attentions=("dot",),
        optimizers=("adamw",), clips=("none",), lrs=(1e-3,), seeds=2,
        model=ModelConfig(d_model=32, num_heads=2, d_ff=64),
        train=TrainConfig(task="mlm", steps=0, batch_size=16, seq_len=32),
        probe=ProbeConfig(power_iters=10, hutchinson_samples=4, probe_batch=2),
    )


def _compare() -> SweepSpec:
    """`python -m experiments.depth_sweep --preset compare`: the study in miniature, sized for a 2-core CPU.

    Post-LN, Pre-LN, DeepNorm, Admin and ReZero; AdamW and RMSprop, each without clipping and with
    global-norm clipping at 1.0; depths 2 to 48; three learning rates (3e-3, 1e-2, 3e-2: the upper ones find
    where each optimizer's stable window ends); 3 seeds; the bidirectional encoder on real text (`mlm`, the
    built-in corpus): 240 cells. Short runs (200 steps) at the quick preset's width, so that the whole grid
    runs in about half an hour cold on two cores (measured: benchmarks/presets.md); its committed results are
    results/compare-cpu/. Shows which placements keep their gradients across depth under each optimizer,
    where each optimizer's learning-rate window closes as depth grows, and what clipping changes. Not final
    quality: in 200 steps the runs learn the corpus's character frequencies and little more, so none counts as
    trained (`jaxnorm.outcome`) and its stability map counts the runs that did not diverge.
    """
    return SweepSpec(
        depths=(2, 6, 16, 48), blocks=("post_ln", "pre_ln", "deepnorm", "admin", "rezero"), norms=("layernorm",),
        attentions=("dot",), optimizers=("adamw", "rmsprop"), clips=("none", "global_norm:1.0"),
        lrs=(3e-3, 1e-2, 3e-2), seeds=3,
        model=ModelConfig(d_model=32, num_heads=2, d_ff=64, remat=False),
        optim=OptimConfig(schedule="warmup_cosine", warmup_steps=20),
        train=TrainConfig(task="mlm", steps=200, batch_size=8, seq_len=32, log_every=10, eval_every=100,
                          eval_batches=4),
        probe=ProbeConfig(probe_every=100, power_iters=10, hutchinson_samples=4, probe_batch=2),
    )


PRESETS = {"quick": _quick, "compare": _compare, "paper": _paper, "init": _init}


def preset(name: str) -> SweepSpec:
    """The named preset's spec (see each preset's docstring for its command and what it shows, and
    benchmarks/presets.md for how long it takes)."""
    if name not in PRESETS:
        raise ConfigError(f"preset (--preset): invalid value {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()
