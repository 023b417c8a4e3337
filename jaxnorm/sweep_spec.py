"""What a sweep asks for: `SweepSpec` (a grid of cells over shared base configs), its presets, and
`expand(spec) -> list[Cell]`.

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
import math
from typing import Any

from jaxnorm.config import (
    ATTENTIONS, BLOCKS, CLIPS, FLOAT32_MAX, FLOAT32_TINY, LIMITS, NORM_FREE_BLOCKS, NORMS,
    OPTIMIZERS, TEXT_TASKS, ConfigError, task_model_config,
    ModelConfig, OptimConfig, ProbeConfig, TrainConfig, from_dict, to_dict,
)

# `lm` is a causal decoder; `mlm` and the synthetic tasks are bidirectional encoders (CAUSAL_TASKS, as
# jaxnorm.data decides). `lm` and `mlm` read a text corpus (TEXT_TASKS); only they accept --text-file.
CLIP_FORMS = "none, global_norm:<c>, value:<c>, agc:<c> (c a number > 0)"
# Grid axes in expansion order (the last varies fastest) with the CLI flag that sets each.
AXES = ("depths", "blocks", "norms", "attentions", "optimizers", "clips", "lrs")
FLAGS = {"depths": "--depths", "blocks": "--blocks", "norms": "--norms", "attentions": "--attentions",
         "optimizers": "--optimizers", "clips": "--clip", "lrs": "--lrs", "seeds": "--seeds"}


def _bad(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"SweepSpec.{field} ({FLAGS[field]}): invalid value {value!r}; allowed: {allowed}")


def parse_clip(text: str) -> tuple[str, float]:
    """'none' | 'global_norm:1.0' | 'value:0.5' | 'agc:0.01' -> (OptimConfig.clip, OptimConfig.clip_value)."""
    if not isinstance(text, str):
        raise _bad("clips", text, CLIP_FORMS)
    if text == "none":
        return "none", 1.0
    kind, sep, value = text.partition(":")
    try:
        c = float(value)
    except ValueError:
        c = math.nan
    if not sep or kind not in CLIPS or kind == "none" or not (math.isfinite(c) and c > 0):
        raise _bad("clips", text, CLIP_FORMS)
    return kind, c


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: its axis values, its resolved configs and its stable id."""

    depth: int
    block: str
    norm: str
    attention: str
    optimizer: str
    clip: str
    lr: float
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    probe: ProbeConfig
    cell_id: str

    def axes(self) -> dict[str, Any]:
        """The grid coordinates: {depth, block, norm, attention, optimizer, clip, lr}."""
        return {"depth": self.depth, "block": self.block, "norm": self.norm, "attention": self.attention,
                "optimizer": self.optimizer, "clip": self.clip, "lr": self.lr}

    def configs(self) -> dict[str, Any]:
        return {"model": to_dict(self.model), "optim": to_dict(self.optim), "train": to_dict(self.train),
                "probe": to_dict(self.probe)}


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: the same bytes for the same data in every process."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def make_cell_id(axes: dict[str, Any], configs: dict[str, Any]) -> str:
    """`L8-pre_ln-layernorm-dot-adamw-none-lr0.001-3f9a2c1b`: readable axes + sha256 of the configs."""
    digest = hashlib.sha256(canonical_json(configs).encode()).hexdigest()[:8]
    clip = axes["clip"].replace(":", "")
    return (f"L{axes['depth']}-{axes['block']}-{axes['norm']}-{axes['attention']}-{axes['optimizer']}-"
            f"{clip}-lr{axes['lr']:g}-{digest}")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A grid of cells: the product of the axes below, applied on top of the base configs.

    Blocks without a norm layer (rezero, no_norm) ignore `norms`: they get one cell with norm "none"
    per point of the other axes instead of one identical cell per norm. `seeds` models per cell are
    trained together (vmapped) from `train.seed`, `train.seed + 1`, ...; the sweep's own progress bar
    replaces the per-cell `train.progress` flag, which is not part of a cell's identity.
    """

    depths: tuple[int, ...] = (2, 8, 24)       # L values
    blocks: tuple[str, ...] = ("pre_ln",)     # residual/norm placements, from BLOCKS
    norms: tuple[str, ...] = ("layernorm",)   # normalisation layers, from NORMS
    attentions: tuple[str, ...] = ("dot",)    # attention forms, from ATTENTIONS
    optimizers: tuple[str, ...] = ("adamw",)  # from OPTIMIZERS
    clips: tuple[str, ...] = ("none",)        # "none" or "<kind>:<c>", kind from CLIPS (see parse_clip)
    lrs: tuple[float, ...] = (1e-3,)          # peak learning rates (cells differing only in lr share a compile)
    seeds: int = 1                            # models per cell (TrainConfig.seeds)
    model: ModelConfig = ModelConfig()        # base model; depth/block/norm/attention come from the axes
    optim: OptimConfig = OptimConfig()        # base optimizer; optimizer/clip/clip_value/lr from the axes
    train: TrainConfig = TrainConfig()        # base training run; seeds from `seeds`
    probe: ProbeConfig = ProbeConfig()        # which measurements are recorded

    def __post_init__(self) -> None:
        for name in AXES:  # lists from JSON or a notebook become tuples, so specs hash and compare
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "train", self.train.replace(progress=False))
        for name, cls in (("model", ModelConfig), ("optim", OptimConfig), ("train", TrainConfig),
                          ("probe", ProbeConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"SweepSpec.{name}: invalid value {getattr(self, name)!r}; allowed: a {cls.__name__}")
        self._check_axes()
        for name in AXES:
            object.__setattr__(self, name, merge_duplicates(name, getattr(self, name)))
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= LIMITS["seeds"]:
            raise _bad("seeds", self.seeds, f"an integer >= 1 and <= {LIMITS['seeds']}")
        expand(self)  # builds (and so validates) every cell's configs

    def _check_axes(self) -> None:
        registries = {"blocks": BLOCKS, "norms": NORMS, "attentions": ATTENTIONS, "optimizers": OPTIMIZERS}
        for name in AXES:
            values = getattr(self, name)
            if not values:
                raise _bad(name, values, "a non-empty list")
            for v in values:
                if name == "depths" and (isinstance(v, bool) or not isinstance(v, int)
                                         or not 1 <= v <= LIMITS["depth"]):
                    raise _bad(name, v, f"integers >= 1 and <= {LIMITS['depth']}")
                if name == "lrs" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or not math.isfinite(v) or not FLOAT32_TINY <= v <= FLOAT32_MAX):
                    raise _bad(name, v, f"numbers > 0 that float32 represents (>= {FLOAT32_TINY:.4g} "
                                        f"and <= {FLOAT32_MAX:.4g})")
                if name == "clips":
                    parse_clip(v)
                if name in registries and v not in registries[name]:
                    raise _bad(name, v, ", ".join(registries[name]))

    def replace(self, **changes: Any) -> "SweepSpec":
        return dataclasses.replace(self, **changes)

    @property
    def num_cells(self) -> int:
        return len(expand(self))


def merge_duplicates(axis: str, values: tuple) -> tuple:
    """`values` without repeats, the first spelling kept: values equal after normalisation (a clip
    `global_norm:1` and `global_norm:1.0`, learning rates 1e-3 and 0.001) would train identical cells."""
    key = parse_clip if axis == "clips" else (float if axis == "lrs" else (lambda v: v))
    seen, kept = set(), []
    for v in values:
        if key(v) not in seen:
            seen.add(key(v))
            kept.append(v)
    return tuple(kept)


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """The spec as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(to_dict(spec)))


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    """Inverse of `spec_to_dict`; unknown keys are refused with the list of known ones."""
    data = dict(data)
    for name, cls in (("model", ModelConfig), ("optim", OptimConfig), ("train", TrainConfig),
                      ("probe", ProbeConfig)):
        if name in data:
            data[name] = from_dict(cls, data[name])
    return from_dict(SweepSpec, data)


def _cell(spec: SweepSpec, depth: int, block: str, norm: str, attention: str, optimizer: str, clip: str,
          lr: float) -> Cell:
    clip_kind, clip_value = parse_clip(clip)
    axes = dict(depth=depth, block=block, norm=norm, attention=attention, optimizer=optimizer, clip=clip,
                lr=float(lr))
    try:
        model = task_model_config(spec.model.replace(depth=depth, block=block, norm=norm, attention=attention),
                                  spec.train)
        optim = spec.optim.replace(optimizer=optimizer, clip=clip_kind, clip_value=clip_value, lr=float(lr))
    except ConfigError as e:
        where = " ".join(f"{k}={v}" for k, v in axes.items())
        raise ConfigError(f"{e} (task={spec.train.task}, cell {where})") from None
    train = spec.train.replace(seeds=spec.seeds, progress=False)
    configs = {"model": to_dict(model), "optim": to_dict(optim), "train": to_dict(train),
               "probe": to_dict(spec.probe)}
    return Cell(**axes, model=model, optim=optim, train=train, probe=spec.probe,
                cell_id=make_cell_id(axes, configs))


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, in a fixed order: depth slowest, then block, norm, attention, optimizer,
    clip, and lr fastest (neighbouring cells then share compiled programs)."""
    cells, seen = [], set()
    for depth, block, norm, attention, optimizer, clip, lr in itertools.product(
            *(getattr(spec, a) for a in AXES)):
        if block in NORM_FREE_BLOCKS:
            norm = "none"
        cell = _cell(spec, depth, block, norm, attention, optimizer, clip, lr)
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
    left by step 600, while at 1e-2 every cell that trains ends at ~100% accuracy with the loss near 0 (at depth
    2 Pre-LN and Post-LN get there by step ~200, at depth 24 Pre-LN and ReZero by ~400). Measured: 5 min
    52 s wall on a 2-core x86 CPU with an empty compilation cache, shared with other work (load average
    ~5; the previous 180-step preset took 5 min 8 s on the quiet machine); most of it compiling (~20 s per
    cell here), the training 98 s in all; a rerun or resumed sweep reuses JAX's persistent compilation
    cache. Shows depth effects: Post-LN trains at depth 2 but stays near chance at depth 8 and at chance
    loss (≈ ln 16) at depth 24, where its end-of-training gradients vanish towards the input (first/last
    layer ratio ~1e-6), while Pre-LN and ReZero reach 100% at every depth. Add `--blocks
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
    `results.lr_sensitivity` applies), 3 seeds: 2,688 cells. Expect ~15–40 s per cell on one H100
    (most in depth ≥ 32), i.e. roughly a day on one GPU: split it with `--shard i/n` over machines.
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
    Measured end to end on a 2-core CPU with an empty compilation cache: 5 min 32 s.
    For a look in about a minute, narrow the grid (`--blocks post_ln,pre_ln --depths 2,8,32`), or use the
    explore notebook (gradient norms only, one program per block). Shows the per-layer gradient and Jacobian
    profile each placement starts from.
    """
    return SweepSpec(
        depths=(2, 4, 8, 16, 32, 64), blocks=BLOCKS, norms=("layernorm",), attentions=("dot",),
        optimizers=("adamw",), clips=("none",), lrs=(1e-3,), seeds=2,
        model=ModelConfig(d_model=32, num_heads=2, d_ff=64),
        train=TrainConfig(task="mlm", steps=0, batch_size=16, seq_len=32),
        probe=ProbeConfig(power_iters=10, hutchinson_samples=4, probe_batch=2),
    )


PRESETS = {"quick": _quick, "paper": _paper, "init": _init}


def preset(name: str) -> SweepSpec:
    """The named preset's spec (see each preset's docstring for its command, runtime and what it shows)."""
    if name not in PRESETS:
        raise ConfigError(f"preset (--preset): invalid value {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()
