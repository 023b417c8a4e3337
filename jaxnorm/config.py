"""Typed, frozen configuration for every concern, with the variant name registries.

Every name below is public vocabulary: the same strings are config values, CLI flag values, result
columns and figure legends. Each dataclass validates itself on construction and raises
:class:`ConfigError` (a ``ValueError``) whose one-line message names the field, the bad value and the
allowed values, so a typo fails before anything is compiled or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxnorm.placements import PLACEMENTS

# --- registries: the allowed values of each variant field --------------------------------------------

BLOCKS = tuple(PLACEMENTS)  # jaxnorm/placements.py: one entry per block says where its norms and residuals sit
NORMS = ("layernorm", "rmsnorm", "scalenorm", "groupnorm", "instancenorm", "batchnorm", "none")
ATTENTIONS = ("dot", "dot_unscaled", "cosine", "qk_norm", "l2", "sigma_reparam")
ACTIVATIONS = ("relu", "gelu")
INITS = ("xavier", "small", "depth_scaled", "t_fixup", "ds_init")
POSITIONS = ("learned", "sinusoidal")
ADMIN_MODES = ("profiled", "closed_form")
DTYPES = ("float32", "bfloat16")

OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd", "lion", "adafactor")
CLIPS = ("none", "global_norm", "value", "agc")
SCHEDULES = ("constant", "warmup_constant", "warmup_cosine", "inverse_sqrt")

TASKS = ("lm", "mlm", "reverse", "sort", "copy")
# Task groups. Text tasks read a corpus (the built-in one or `text_file`); the synthetic ones draw random
# symbol sequences. Causality is a separate property: only `lm` is a causal decoder, `mlm` and the
# synthetic tasks are bidirectional encoders.
TEXT_TASKS = ("lm", "mlm")
SYNTHETIC_TASKS = ("reverse", "sort", "copy")
CAUSAL_TASKS = ("lm",)
SPECTRAL_METHODS = ("lanczos", "power")

# Norms that mix positions along the sequence: with a causal mask they would leak the future into
# position t through the normalisation statistics, so that combination is refused.
SEQUENCE_MIXING_NORMS = ("instancenorm", "batchnorm")
# Blocks that have no normalisation layer at all: their `norm` field is ignored.
NORM_FREE_BLOCKS = tuple(name for name, p in PLACEMENTS.items() if not p.norms)


# Upper limits of every size: far above what any sweep here needs, low enough that a typo (an extra digit,
# a pasted byte count) is refused before JAX overflows an int32, XLA aborts or a loop runs forever. Memory
# is checked separately (jaxnorm.budget), against what the device has.
LIMITS = {"depth": 4096, "d_model": 65536, "num_heads": 4096, "d_ff": 262144, "vocab_size": 2**20,
          "max_len": 2**20, "num_groups": 65536, "sigma_reparam_iters": 1000,
          "steps": 10**9, "batch_size": 2**20, "seq_len": 2**20, "num_symbols": 2**16, "text_bytes": 2**34,
          "seeds": 4096, "seed": 2**31 - 1, "log_every": 10**9, "eval_every": 10**9, "eval_batches": 10**6,
          "warmup_steps": 10**9, "probe_every": 10**9, "probe_batch": 2**16, "power_iters": 10**4,
          "hutchinson_samples": 10**4, "cpu_devices": 256}
# Learning rates are float32 numbers in training: below the smallest normal float32 one rounds to 0 (or is
# flushed to 0 on accelerators), above the largest it is inf.
FLOAT32_TINY, FLOAT32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38


class ConfigError(ValueError):
    """A configuration value is invalid. The message is one line naming field, value and what is allowed."""


def _fail(owner: str, field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{owner}.{field}: invalid value {value!r}; allowed: {allowed}")


def check_choice(owner: str, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(owner, field, value, ", ".join(allowed))


def check_int(owner: str, field: str, value: Any, minimum: int) -> None:
    """An int (not a bool) in [minimum, LIMITS[field]] (no upper limit for a field LIMITS lacks)."""
    maximum = LIMITS.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        _fail(owner, field, value, f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else ""))


def check_float(owner: str, field: str, value: Any, minimum: float = 0.0, *, strict: bool = False,
                maximum: float | None = None) -> None:
    """A finite int or float >= minimum (> with `strict`) and <= maximum."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        upper = f" and <= {maximum}" if maximum is not None else ""
        _fail(owner, field, value, f"a finite number {bound}{upper}")


def check_lr(owner: str, field: str, value: Any) -> None:
    """A learning rate: a number > 0 that float32 represents as a normal number (not 0, not inf)."""
    check_float(owner, field, value, FLOAT32_TINY, maximum=FLOAT32_MAX)


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(owner, field, value, "true or false")


def check_fields(cfg: Any, *, owner: str | None = None, ints: dict[str, int] | None = None, choices: dict[str, tuple[str, ...]] | None = None,
                 bools: tuple[str, ...] = (), floats: dict[str, dict[str, Any]] | None = None) -> None:
    """Validate a config's fields from tables: `ints` field -> minimum (maximum from LIMITS), `choices` field ->
    allowed names, `bools` fields, `floats` field -> check_float's keyword arguments. `owner` names the class in
    errors (default: cfg's own class)."""
    owner = owner or type(cfg).__name__
    for field, minimum in (ints or {}).items():
        check_int(owner, field, getattr(cfg, field), minimum)
    for field, allowed in (choices or {}).items():
        check_choice(owner, field, getattr(cfg, field), allowed)
    for field in bools:
        check_bool(owner, field, getattr(cfg, field))
    for field, kw in (floats or {}).items():
        check_float(owner, field, getattr(cfg, field), **kw)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The Transformer: its size and every variant choice (the variants: ARCHITECTURE.md, "Registries")."""

    depth: int = 4                 # L, number of encoder blocks (each = attention + MLP sublayer)
    d_model: int = 64              # D, width of the residual stream
    num_heads: int = 4             # H; d_model must be divisible by it (head size d_k = D / H)
    d_ff: int = 256                # F, hidden width of the MLP
    vocab_size: int = 32           # V; `train` overwrites it from the task
    max_len: int = 32              # T, longest sequence (size of learned position table)
    block: str = "pre_ln"          # residual / norm placement, one of BLOCKS
    norm: str = "layernorm"        # normalisation layer, one of NORMS
    attention: str = "dot"         # attention form, one of ATTENTIONS
    activation: str = "relu"       # MLP non-linearity, one of ACTIVATIONS
    init: str = "xavier"           # weight initialisation scheme, one of INITS
    positions: str = "learned"     # position encoding, one of POSITIONS
    causal: bool = False           # causal mask (decoder-style LM) vs bidirectional encoder
    num_groups: int = 4            # groups for groupnorm; must divide d_model
    norm_eps: float = 1e-5         # epsilon inside every norm
    admin_mode: str = "profiled"   # how Admin sets ω: a profiling forward pass, or the closed form
    depth_mup_alpha: float = 0.5   # depth-μP branch multiplier L^-α (α in [0.5, 1] in the literature)
    mix_ln_alpha: float = 0.25     # Mix-LN: the first ⌊α·L⌋ layers are Post-LN, the rest Pre-LN (Li et al. 2024)
    sigma_reparam_iters: int = 1   # power-iteration steps per forward pass for σReparam
    scan: bool = True              # scan over stacked blocks; False = Python loop (test reference only)
    remat: bool = False            # rematerialise each block in the backward pass (saves memory; faster on CPU)
    dtype: str = "float32"         # matmul compute dtype; bfloat16 is for GPU/TPU (params stay float32)

    def __post_init__(self) -> None:
        o = "ModelConfig"
        check_fields(self, owner=o, ints={"depth": 1, "d_model": 1, "num_heads": 1, "d_ff": 1, "vocab_size": 2, "max_len": 1,
                                 "num_groups": 1, "sigma_reparam_iters": 1},
                     choices={"block": tuple(PLACEMENTS),  # live: a registration counts at once
                              "norm": NORMS, "attention": ATTENTIONS, "activation": ACTIVATIONS, "init": INITS,
                              "positions": POSITIONS, "admin_mode": ADMIN_MODES, "dtype": DTYPES},
                     bools=("causal", "scan", "remat"),
                     floats={"norm_eps": dict(minimum=0.0, strict=True), "depth_mup_alpha": dict(minimum=0.0),
                             "mix_ln_alpha": dict(minimum=0.0, maximum=1.0)})
        if self.d_model % self.num_heads:
            _fail(o, "num_heads", self.num_heads, f"a divisor of d_model={self.d_model}")
        if self.norm == "groupnorm" and self.d_model % self.num_groups:
            _fail(o, "num_groups", self.num_groups, f"a divisor of d_model={self.d_model}")
        if self.causal and self.norm in SEQUENCE_MIXING_NORMS and self.block not in NORM_FREE_BLOCKS:
            raise ConfigError(
                f"ModelConfig.norm: invalid value {self.norm!r} with causal=True (its statistics mix "
                f"positions and would leak the future); allowed with causal: "
                + ", ".join(n for n in NORMS if n not in SEQUENCE_MIXING_NORMS))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optax chain: [clip] -> optimizer -> learning-rate schedule, weight decay masked off norms/biases/scalars."""

    optimizer: str = "adamw"       # one of OPTIMIZERS
    lr: float = 1e-3               # peak learning rate (injected: changing it does not recompile)
    schedule: str = "warmup_cosine"  # one of SCHEDULES
    warmup_steps: int = 50         # linear warmup length for warmup_* and inverse_sqrt schedules
    clip: str = "none"             # one of CLIPS
    clip_value: float = 1.0        # max global norm (global_norm), max |g| (value), or ratio λ (agc)
    weight_decay: float = 0.01     # decoupled decay (adamw, lion, adafactor); never on norms, biases, scalars
    b1: float = 0.9                # first-moment decay (adam*, lion) / momentum (sgd)
    b2: float = 0.999              # second-moment decay (adam*, lion) / of rmsprop's bias-corrected average
    eps: float = 1e-8              # denominator epsilon
    skip_nonfinite: bool = False   # wrap in optax.apply_if_finite: a non-finite gradient skips the update

    def __post_init__(self) -> None:
        check_fields(self, choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "clip": CLIPS})
        check_lr("OptimConfig", "lr", self.lr)
        check_fields(self, ints={"warmup_steps": 0}, bools=("skip_nonfinite",),
                     floats={"clip_value": dict(minimum=0.0, strict=True), "weight_decay": dict(minimum=0.0),
                             "b1": dict(minimum=0.0, maximum=1.0), "b2": dict(minimum=0.0, maximum=1.0),
                             "eps": dict(minimum=0.0)})

    def replace(self, **changes: Any) -> "OptimConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run ("cell"): task, length, batch, seeds, logging and divergence rule."""

    task: str = "reverse"          # one of TASKS; lm is causal, mlm and the synthetic tasks are bidirectional
    steps: int = 300               # optimizer steps; 0 = only profile the model at initialisation
    batch_size: int = 32           # sequences per step (sharded over local devices when several)
    seq_len: int = 16              # T; for reverse/sort/copy the input half is seq_len // 2
    num_symbols: int = 16          # alphabet size of the synthetic tasks
    text_file: str | None = None   # lm/mlm corpus; None = the Python standard library's own source (offline)
    text_bytes: int = 2_000_000    # byte budget read from the corpus (deterministic prefix)
    seeds: int = 1                 # S models trained together (vmapped) from seeds seed, seed+1, ...
    seed: int = 0                  # first seed
    log_every: int = 10            # metrics move to the host every log_every steps
    eval_every: int = 100          # held-out loss every eval_every steps (and at the end)
    eval_batches: int = 4          # batches per evaluation
    divergence_factor: float = 3.0  # a loss above factor × initial loss (or non-finite) = diverged
    z_loss: float = 0.0            # c in c·log²Z added to the loss (Wortsman et al. 2023); 0 = off
    progress: bool = True          # tqdm progress bar

    def __post_init__(self) -> None:
        o = "TrainConfig"
        check_fields(self, owner=o, choices={"task": TASKS},
                     ints={"steps": 0, "batch_size": 1, "seq_len": 2, "num_symbols": 2, "text_bytes": 1, "seeds": 1,
                           "seed": 0, "log_every": 1, "eval_every": 1, "eval_batches": 1},
                     floats={"divergence_factor": dict(minimum=1.0, strict=True), "z_loss": dict(minimum=0.0)},
                     bools=("progress",))
        if self.text_file is not None and not isinstance(self.text_file, str):
            _fail(o, "text_file", self.text_file, "a path string or None")
        if self.text_file is not None and self.task not in TEXT_TASKS:
            raise ConfigError(f"{o}.text_file: invalid value {self.text_file!r} for task {self.task!r}; allowed: "
                              f"a text file only with task {' or '.join(TEXT_TASKS)} (None for other tasks)")
        if self.task in SYNTHETIC_TASKS and self.seq_len % 2:
            _fail(o, "seq_len", self.seq_len, f"an even number for task {self.task!r}")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Which per-layer measurements the train step records, and how often (the metrics: jaxnorm/metrics.py)."""

    grads: bool = True             # per-layer parameter-gradient norms by group, param norms, update ratios
    activations: bool = True       # residual-stream gradient norms ∂loss/∂x_l, residual RMS, branch ratios
    attention: bool = True         # attention entropy and max logit per layer and head
    jacobian: bool = True          # layer-to-layer spectral/Frobenius and end-to-end Jacobian norms
    alignment: bool = True         # token alignment (rank collapse) per layer
    amplification: bool = False    # output change after one optimizer step (Liu et al. 2020); costs a forward
    spectrum: bool = False         # singular values of the end-to-end Jacobian (dense; tiny models only)
    probe_every: int = 50          # Jacobian/amplification probes run every probe_every steps (and at step 0)
    probe_batch: int = 4           # sequences in the fixed probe batch
    spectral_method: str = "lanczos"  # how spectral norms are read from the products JᵀJv (jaxnorm.probes)
    power_iters: int = 10          # products JᵀJv per spectral norm: Lanczos or power-iteration steps
    hutchinson_samples: int = 8    # Rademacher samples for the Frobenius estimate

    def __post_init__(self) -> None:
        check_fields(self, bools=("grads", "activations", "attention", "jacobian", "alignment", "amplification",
                                  "spectrum"),
                     ints={"probe_every": 1, "probe_batch": 1, "power_iters": 1, "hutchinson_samples": 1},
                     choices={"spectral_method": SPECTRAL_METHODS})

    def replace(self, **changes: Any) -> "ProbeConfig":
        return dataclasses.replace(self, **changes)


def task_model_config(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int | None = None) -> ModelConfig:
    """The model config `train_cfg.task` implies, decided here only: causal iff the task is in CAUSAL_TASKS,
    positions for `seq_len` tokens, and (when the dataset is known) its vocabulary. A sweep's cell ids hash
    the config without the vocabulary (known only once a text corpus is read); training adds it."""
    changes = dict(causal=train_cfg.task in CAUSAL_TASKS, max_len=train_cfg.seq_len)
    if vocab_size is not None:
        changes["vocab_size"] = vocab_size
    return model_cfg.replace(**changes)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain JSON-able dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config from a dict, refusing unknown keys with the list of known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)
