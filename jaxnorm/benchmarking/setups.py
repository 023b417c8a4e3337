"""The benchmark model, ready to run: its configs, initialised seeds, and the trainer's programs for it.

Every benchmark script times the programs `jaxnorm.trainer` runs, built the way it builds them. The trainer's
program builder is private and changes with it, so `trainer_program` is the only place that reaches it: a
change of its signature, or of the programs' arguments, is one edit there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxnorm import probes, programs, sharding
from jaxnorm import trainer as train_lib
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.data import make_dataset
from jaxnorm.step import StepFns, build_step_fns, run_hparams
from jaxnorm.sweep_spec import preset
from jaxnorm.trainer import resolve_config

# Probe families that the train chunk's first step computes (per-layer, inside the step).
LAYER_FAMILIES = ("grads", "activations", "attention", "alignment")
NO_PROBES = ProbeConfig(grads=False, activations=False, attention=False, jacobian=False, alignment=False)
GRADS_ONLY = NO_PROBES.replace(grads=True)  # the benchmarked step records per-layer gradient norms


# --- the one adapter to the trainer's private program builders -------------------------------------------

@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted trainer program and how a benchmark calls it: `args` maps the benchmark's arguments (for a
    chunk: state, data keys, data) to the program's own, so call sites stay as they are when those change."""

    jitted: Any
    args: Callable[..., tuple]

    def __call__(self, *a: Any) -> Any:
        return self.jitted(*self.args(*a))

    def lower(self, *a: Any) -> Any:
        return self.jitted.lower(*self.args(*a))

    def eval_shape(self, *a: Any) -> Any:
        """The output's shapes (traced, nothing compiled)."""
        return jax.eval_shape(self.jitted, *self.args(*a))

    def compile(self, *a: Any, options: dict | None = None) -> Callable:
        """Compiled for these arguments' shapes with XLA `options`; called like the program itself."""
        compiled = self.lower(*a).compile(options or None)
        return lambda *b: compiled(*self.args(*b))


def trainer_program(kind: str, fns: StepFns, data: Any, batch_size: int, *args: Any, mesh: Mesh | None = None,
                    once: bool = False, fresh: bool = False, active_depth: int | None = None) -> Program:
    """The program of `kind` that `jaxnorm.trainer` runs for `mesh` (None: one device), built by its own
    builder. "chunk" (args n_steps, with_probes; called with state, data keys, data): a probed step and
    n_steps − 1 bare ones. "measure" (the same args and call): that chunk's probed step with the update off,
    as a cell's final measurement runs it. "eval" (args eval_batches, z_loss; called with params, rest, one
    key per seed, data). "init" (called with keys, `seed_hparams`). `active_depth`: a padded model's (else
    None). `once`: compiled as a program that runs once per cell. `fresh`: the trainer's program cache is
    emptied first, so the program is traced, lowered and compiled anew."""
    if fresh:
        programs.clear()
    active = None if active_depth is None else jnp.int32(active_depth)
    if kind in ("chunk", "measure"):
        n_steps, with_probes = args
        apply_first, n_bare = (True, n_steps - 1) if kind == "chunk" else (False, 0)
        jitted = train_lib._program("chunk", fns, data, batch_size, mesh, n_steps, with_probes, once=once)
        return Program(jitted, lambda state, keys, d: (state, keys, d, active, jnp.asarray(apply_first),
                                                      jnp.int32(n_bare)))
    jitted = train_lib._program(kind, fns, data, batch_size, mesh, *args, once=once)
    if kind == "eval":
        return Program(jitted, lambda params, rest, keys, d: (params, rest, keys, d, active))
    return Program(jitted, lambda keys, hparams: (keys, hparams, active))


def seed_hparams(optim_cfg: OptimConfig, seeds: int) -> dict[str, jax.Array]:
    """The per-seed hyperparameters an "init" program takes (learning rate, weight decay, clip threshold)."""
    return {k: jnp.full((seeds,), v, jnp.float32) for k, v in run_hparams(optim_cfg).items()}


# --- the benchmark model ---------------------------------------------------------------------------------

def bench_configs(depth: int, *, block: str = "pre_ln", tiny: bool = False
                  ) -> tuple[ModelConfig, OptimConfig, TrainConfig]:
    """The `quick` preset's model and training shape at `depth` (ReLU, AdamW); `tiny` shrinks it for smoke runs."""
    spec = preset("quick")
    model_cfg = spec.model.replace(depth=depth, block=block, activation="relu", scan=True)
    optim_cfg = spec.optim.replace(optimizer="adamw", lr=3e-3)
    train_cfg = spec.train.replace(progress=False, seeds=1)
    if tiny:
        model_cfg = model_cfg.replace(d_model=16, num_heads=2, d_ff=32)
        train_cfg = train_cfg.replace(batch_size=4, seq_len=8, log_every=4)
    return model_cfg, optim_cfg, train_cfg


def describe_width(tiny: bool) -> str:
    m, _, t = bench_configs(1, tiny=tiny)
    return (f"D={m.d_model}, H={m.num_heads}, F={m.d_ff}, T={t.seq_len}, B={t.batch_size}, task={t.task}, "
            f"chunk={t.log_every} steps, {jax.devices()[0].device_kind}")


def parse_depths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def start(tiny: bool) -> None:
    """A benchmark process's settings, before JAX starts its backend. The persistent compilation cache is off,
    so every compile is a cold one and no on-disk program answers for XLA. `tiny` (--tiny): XLA's backend
    optimisation off too (compiles several times faster); smoke runs check that a script works end to end,
    their numbers are not measurements."""
    jax.config.update("jax_enable_compilation_cache", False)
    flags = os.environ.get("XLA_FLAGS", "")
    if tiny and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


@dataclasses.dataclass
class Setup:
    """Everything needed to call a train chunk: step functions, data and S initialised seeds."""

    fns: StepFns
    data: Any
    state: Any
    data_keys: jax.Array
    model_cfg: ModelConfig
    optim_cfg: OptimConfig
    train_cfg: TrainConfig
    probe_cfg: ProbeConfig

    chunks: dict = dataclasses.field(default_factory=dict)

    def chunk(self, n_steps: int, with_probes: bool, mesh: Mesh | None = None) -> Program:
        """A fresh jitted chunk of n_steps (donates its state argument: always feed back the returned state)."""
        return trainer_program("chunk", self.fns, self.data, self.train_cfg.batch_size, n_steps, with_probes,
                               mesh=mesh, fresh=True)

    def cached_chunk(self, n_steps: int, with_probes: bool, mesh: Mesh | None = None) -> Program:
        """The same chunk, built once per Setup, so benchmark sections that run one program compile it once."""
        if (n_steps, with_probes, mesh) not in self.chunks:
            self.chunks[n_steps, with_probes, mesh] = self.chunk(n_steps, with_probes, mesh)
        return self.chunks[n_steps, with_probes, mesh]

    def runner(self, n_steps: int, with_probes: bool, mesh: Mesh | None = None) -> Callable[[], Any]:
        """A no-argument callable running the chunk on its own copy of the state (threaded through calls).
        With a mesh (`sharding.train_mesh`): the chunk `jaxnorm.trainer` compiles for it, the state and keys
        split over it."""
        chunk = self.cached_chunk(n_steps, with_probes, mesh)
        box = [sharding.shard_seeds(jax.tree.map(jnp.copy, self.state), mesh)]
        keys = sharding.shard_seeds(self.data_keys, mesh)

        def run():
            box[0], scalars, layers = chunk(box[0], keys, self.data)
            return box[0], scalars, layers

        return run

    def abstract_args(self) -> tuple:
        """(state, data keys) as shapes: with `data`, enough to lower and compile a chunk."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (self.state, self.data_keys))

    def jacobian_runner(self, probe_cfg: ProbeConfig) -> Callable[[], Any]:
        """A no-argument callable: the Jacobian probes of this setup's parameters, as `jaxnorm.trainer` calls them
        (its probe batch, `probe_cfg`'s sizes)."""
        return functools.partial(probes.jacobian_stats_seeds, self.fns.graphdef, self.state.params, self.state.rest,
                                 train_lib.probe_tokens(self.data, probe_cfg), jax.random.key(0), probe_cfg)


def make_setup(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig,
               probe_cfg: ProbeConfig, *, seeds: int = 1, materialise: bool = True) -> Setup:
    """Build the step functions the way `jaxnorm.trainer` does and initialise `seeds` seeds (vmapped).
    With materialise=False the state is only its shapes (enough to lower and compile)."""
    data = make_dataset(train_cfg)
    model_cfg = resolve_config(model_cfg, train_cfg, data)
    fns = build_step_fns(model_cfg, optim_cfg.replace(lr=1.0), train_cfg.replace(seeds=1), probe_cfg)
    keys = jnp.stack([jax.random.key(s) for s in range(seeds)])
    init_keys, data_keys = jax.vmap(jax.random.split)(keys).swapaxes(0, 1)
    init = trainer_program("init", fns, data, train_cfg.batch_size, once=True)
    hparams = seed_hparams(optim_cfg, seeds)
    state = init(init_keys, hparams) if materialise else init.eval_shape(init_keys, hparams)
    return Setup(fns, data, state, data_keys, model_cfg, optim_cfg, train_cfg, probe_cfg)


_SETUPS: dict[tuple, Setup] = {}


def cached_setup(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig, probe_cfg: ProbeConfig,
                 *, seeds: int = 1) -> Setup:
    """make_setup, memoised on its arguments (for timing sections that share programs, never for compile timing)."""
    key = (model_cfg, optim_cfg, train_cfg, probe_cfg, seeds)
    if key not in _SETUPS:
        _SETUPS[key] = make_setup(model_cfg, optim_cfg, train_cfg, probe_cfg, seeds=seeds)
    return _SETUPS[key]
