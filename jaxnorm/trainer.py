"""One training run ("cell"): `train(model_cfg, optim_cfg, train_cfg, probe_cfg) -> History`.

S seeds train together in one compiled program (`jax.vmap`). The loop dispatches a chunk of
`log_every` steps, then reads the previous chunk's metrics while the device works on the next, so the
host never stalls the device except at evaluation and Jacobian-probe points. A learning rate lives in
the optimizer state, so cells that differ only in learning rate reuse one compiled program.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxnorm import model as model_lib
from jaxnorm import packing, padding, probes, programs, sharding
from jaxnorm.config import (ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig, task_model_config,
                            to_dict)
from jaxnorm.data import Dataset, make_dataset
from jaxnorm.history import History, nonfinite_records, stack_dicts
from jaxnorm.step import StepFns, cached_step_fns, cross_entropy, make_chunk, run_hparams

# Seeds' probe batch comes from a key independent of their training data.
PROBE_KEY = 1_000_003


# XLA:CPU's backend optimisation level per program: 0 for a program that runs once per cell (there compiling
# is the whole cost, and level 0 compiles 2-3x faster), 1 for the rest. Level 1 compiled the train chunk
# 1.75x faster than the default (2) and ran it as fast (0.95x at d_model 32, 1.02x at 256: the matmuls are
# library calls at every level); level 0 ran it 3.7x slower. The arithmetic is the same up to float32 rounding.
ONCE_LEVEL, REPEATED_LEVEL = 0, 1


def compiler_options(runs_once: bool) -> dict | None:
    """XLA options for a trainer program: on a CPU, the backend optimisation level for a program that runs
    once or a few times per cell (`runs_once`: initialisation, and with steps = 0 every program) or many
    times (the train chunk, eval and the Jacobian probes while training). None on other backends (they keep
    their defaults) and when XLA_FLAGS already sets a level (the caller's choice wins)."""
    if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return None
    return {"xla_backend_optimization_level": ONCE_LEVEL if runs_once else REPEATED_LEVEL}


def probe_tokens(data: Dataset, probe_cfg: ProbeConfig) -> jax.Array:
    """The fixed probe batch the Jacobian probes measure on, from a key independent of the training data."""
    return data.batch(jax.random.key(PROBE_KEY), probe_cfg.probe_batch, "eval")["inputs"]


def resolve_config(model_cfg: ModelConfig, train_cfg: TrainConfig, data: Dataset | None = None) -> ModelConfig:
    """The model config `train` builds for a task: its vocabulary, sequence length and causality
    (`config.task_model_config`). `data`: the task's dataset if already made (else it is made here)."""
    data = make_dataset(train_cfg) if data is None else data
    return task_model_config(model_cfg, train_cfg, data.vocab_size)


def _program(kind: str, fns: StepFns, data: Dataset, batch_size: int, mesh: Mesh | None, *args: Any,
             once: bool = False) -> Callable:
    """Compiled programs are cached (`jaxnorm.programs`) by everything that shapes them, so a sweep compiles
    each shape once. `mesh`: the pack's `sharding.train_mesh`. `once`: the program runs once or a few times
    per cell (see `compiler_options`); the train chunk is `once` only when nothing trains (steps = 0)."""

    def build() -> Callable:
        batch_fn = lambda d, k: sharding.shard_batch(d.batch(k, batch_size), mesh)  # noqa: E731
        options, axis = compiler_options(once), sharding.seed_axis_name(mesh)
        if kind == "chunk":
            return make_chunk(fns, batch_fn, *args, seed_axis=axis, compiler_options=options)
        if kind == "eval":
            return _make_eval(fns, batch_size, *args, compiler_options=options)
        if kind == "init":  # (keys, per-run hyperparameters, active depth of a padded model or None)
            return programs.jit(jax.vmap(fns.init_state, in_axes=(0, 0, None)), compiler_options=options,
                                name="init")
        raise ValueError(f"program kind: invalid value {kind!r}; allowed: chunk, eval, init")

    return programs.cached("train", fns, (kind, jax.tree.structure(data), batch_size, mesh, once, *args), build)


def _make_eval(fns: StepFns, batch_size: int, eval_batches: int, z_loss: float,
               compiler_options: dict | None = None) -> Callable:
    """jit(vmap over runs): held-out loss and accuracy over `eval_batches` batches;
    (params, rest, keys, data, active_depth), one key per run (the same for a cell's seeds)."""

    def one_seed(params, rest, key, data, active_depth):
        def one(k):
            batch = data.batch(k, batch_size, "eval")
            logits, _, _ = model_lib.apply(fns.graphdef, params, rest, batch["inputs"], train=False,
                                           active_depth=active_depth)
            return cross_entropy(logits, batch, z_loss)[1]
        m = jax.lax.map(one, jax.random.split(key, eval_batches))
        return m["loss"].mean(), m["accuracy"].mean()

    return programs.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None, None)), compiler_options=compiler_options,
                        name="eval")


def _step_key_config(train_cfg: TrainConfig) -> TrainConfig:
    """The part of TrainConfig the compiled step depends on (seed and bookkeeping fields normalised)."""
    return train_cfg.replace(seed=0, seeds=1, progress=False, log_every=1, eval_every=1, eval_batches=1)


def check_config_types(model_cfg: Any, optim_cfg: Any, train_cfg: Any, probe_cfg: Any) -> None:
    """ConfigError naming the argument if a config is None or of another type (e.g. two swapped), instead
    of an AttributeError from deep inside the training code."""
    for name, value, cls in (("model_cfg", model_cfg, ModelConfig), ("optim_cfg", optim_cfg, OptimConfig),
                             ("train_cfg", train_cfg, TrainConfig), ("probe_cfg", probe_cfg, ProbeConfig)):
        if not isinstance(value, cls):
            raise ConfigError(f"train.{name}: invalid value {type(value).__name__}; allowed: a {cls.__name__}")


def train(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig,
          probe_cfg: ProbeConfig | None = None, *, desc: str | None = None, pad_to: int | None = None,
          keep_init: bool = False) -> History:
    """Train `train_cfg.seeds` models from seeds seed, seed+1, ... and return everything measured.

    `pad_to`: run the model as a padded stack of that many layers, of which model_cfg.depth act
    (jaxnorm.padding), so that cells of every depth up to `pad_to` share compiled programs; the History is
    the unpadded run's (per-layer arrays and the final state cut to model_cfg.depth layers), up to float32
    rounding. The inactive layers are skipped, not computed. `keep_init`: also keep each seed's initial
    parameters (History.init_params).

    >>> from jaxnorm import ModelConfig, OptimConfig, TrainConfig, train
    >>> h = train(ModelConfig(depth=2, d_model=32, num_heads=2, d_ff=64), OptimConfig(lr=3e-3),
    ...           TrainConfig(task="copy", steps=20, seq_len=8, batch_size=8, progress=False))
    >>> h.metrics["loss"].shape, h.layers["grad_norm/all"].shape
    ((20, 1), (3, 1, 2))
    """
    return train_pack(model_cfg, [(optim_cfg, train_cfg)], probe_cfg, desc=desc, pad_to=pad_to,
                      keep_init=keep_init)[0]


def train_pack(model_cfg: ModelConfig, members: list[tuple[OptimConfig, TrainConfig]],
               probe_cfg: ProbeConfig | None = None, *, desc: str | None = None, pad_to: int | None = None,
               keep_init: bool = False) -> list[History]:
    """Train several cells side by side in one program and return each one's History, as `train` would
    have returned it for that cell alone (up to float32 rounding).

    `members`: (optim_cfg, train_cfg) per cell, differing only in per-run data (learning rate, weight decay,
    clip threshold, seed and number of seeds; jaxnorm.packing), else ConfigError. Every run of every cell is
    one entry of the vmapped run axis. A cell whose runs have all diverged stops at the end of that chunk, as
    it would alone: its final measurement is taken then and its runs are frozen while the others go on."""
    loop, model_cfg = pack_loop(model_cfg, members, probe_cfg, desc=desc, pad_to=pad_to, keep_init=keep_init)
    records = loop.run()
    return [loop.history(records[m], loop.owner == m, model_cfg, optim_cfg, train_cfg, loop.probe_cfg)
            for m, (optim_cfg, train_cfg) in enumerate(members)]


def compile_pack_ahead(model_cfg: ModelConfig, members: list[tuple[OptimConfig, TrainConfig]],
                       probe_cfg: ProbeConfig | None = None, *, pad_to: int | None = None) -> None:
    """Compile the programs `train_pack` with these arguments will run, without running anything, so that a
    sweep can compile the next model structure while the current one trains (jaxnorm.compile_ahead)."""
    pack_loop(model_cfg, members, probe_cfg, desc="", pad_to=pad_to, keep_init=False)[0].compile_ahead()


def pack_loop(model_cfg: ModelConfig, members: list[tuple[OptimConfig, TrainConfig]],
              probe_cfg: ProbeConfig | None, *, desc: str | None, pad_to: int | None,
              keep_init: bool) -> tuple[PackLoop, ModelConfig]:
    """The checked PackLoop of `train_pack`'s arguments, and the task's model config (its vocabulary etc.)."""
    probe_cfg = ProbeConfig() if probe_cfg is None else probe_cfg
    if not isinstance(members, (list, tuple)) or not members:
        raise ConfigError(f"train_pack.members: invalid value {members!r}; allowed: a non-empty list of "
                          "(OptimConfig, TrainConfig) pairs")
    for optim_cfg, train_cfg in members:
        check_config_types(model_cfg, optim_cfg, train_cfg, probe_cfg)
    program_optim = packing.program_optim([o for o, _ in members])
    packing.check_train_configs([t for _, t in members])
    train_cfg = members[0][1]
    data = make_dataset(train_cfg)
    model_cfg = resolve_config(model_cfg, train_cfg, data)
    run_cfg, active = model_cfg, None
    if pad_to is not None:  # also at pad_to == depth: that cell then shares the shallower cells' programs
        run_cfg, active = padding.padded_config(model_cfg, pad_to), model_cfg.depth
    fns = cached_step_fns(run_cfg, program_optim, _step_key_config(train_cfg), probe_cfg)

    seeds = [t.seed + s for _, t in members for s in range(t.seeds)]
    owner = np.asarray([m for m, (_, t) in enumerate(members) for _ in range(t.seeds)])
    hparams = [run_hparams(o, program_optim.clip) for o, t in members for _ in range(t.seeds)]
    hparams = {k: jnp.asarray([h[k] for h in hparams], jnp.float32) for k in hparams[0]}
    eval_seeds = [t.seed for _, t in members for _ in range(t.seeds)]
    loop = PackLoop(fns, data, train_cfg, probe_cfg, seeds, eval_seeds, owner, hparams, active, keep_init,
                    desc or f"{model_cfg.block} L={model_cfg.depth}")
    return loop, model_cfg


@dataclasses.dataclass
class MemberRecord:
    """Where one cell's record ends in the pack's lists (how many chunks, Jacobian probes and evaluations
    are its), and what was measured when it stopped, for every run of the pack (sliced later)."""

    chunks: int
    jacobians: int
    evals: int
    done: int
    final_layers: dict
    final_scalars: dict
    final_eval: tuple
    final_jacobian: dict | None
    host: dict


class PackLoop:
    """The training loop of one pack: dispatch a chunk of `log_every` steps, then read the previous chunk's
    metrics while the device works on the next, so the host never stalls the device except at evaluation
    and Jacobian-probe points."""

    def __init__(self, fns: StepFns, data: Dataset, train_cfg: TrainConfig, probe_cfg: ProbeConfig,
                 seeds: list[int], eval_seeds: list[int], owner: np.ndarray, hparams: dict, active: int | None,
                 keep_init: bool, desc: str):
        self.fns, self.data, self.train_cfg, self.probe_cfg = fns, data, train_cfg, probe_cfg
        self.seeds, self.eval_seeds, self.owner, self.hparams, self.active = seeds, eval_seeds, owner, hparams, active
        self.keep_init, self.desc = keep_init, desc
        self.chunks: list[list] = []   # [start, n, scalars, layers] per chunk, host arrays once collected
        self.jac_steps: list[int] = []
        self.jac_rows: list[dict] = []
        self.eval_steps: list[int] = []
        self.eval_rows: list[tuple] = []
        self.timing: dict[str, float] = {}
        self.init_params = None

    def _programs(self, mesh: Mesh | None) -> dict[str, Callable]:
        """The pack's programs ("init", "eval", "chunk", and "jacobian" when the probe config asks for it)."""
        cfg, probe_cfg, B = self.train_cfg, self.probe_cfg, self.train_cfg.batch_size
        once = cfg.steps == 0  # the profile at initialisation: every program runs exactly once
        out = {"init": _program("init", self.fns, self.data, B, mesh, once=True),
               "eval": _program("eval", self.fns, self.data, B, mesh, cfg.eval_batches, cfg.z_loss, once=once),
               "chunk": _program("chunk", self.fns, self.data, B, mesh, self.chunk_len, probe_cfg_any(probe_cfg),
                                 once=once)}
        if probe_cfg.jacobian or probe_cfg.spectrum:
            out["jacobian"] = probes.jacobian_program(self.fns.graphdef, probe_cfg, compiler_options(once))
        return out

    @property
    def chunk_len(self) -> int:
        return max(1, min(self.train_cfg.log_every, self.train_cfg.steps))

    def _inputs(self, mesh: Mesh | None) -> tuple:
        """(init keys, data keys, eval keys, active depth, probe tokens) as `run` passes them, split over `mesh`
        where `run` splits them (the init keys are not: the initial state is split after `init`)."""
        keys = jnp.stack([jax.random.key(s) for s in self.seeds])
        init_keys, data_keys = jax.vmap(lambda k: jax.random.split(k))(keys).swapaxes(0, 1)
        # Every seed of a cell is evaluated on the same batches, drawn from the cell's first seed.
        eval_keys = jnp.stack([jax.random.key(s + 7919) for s in self.eval_seeds])
        active = None if self.active is None else jnp.int32(self.active)
        return (init_keys, sharding.shard_seeds(data_keys, mesh), sharding.shard_seeds(eval_keys, mesh), active,
                probe_tokens(self.data, self.probe_cfg))

    def _mesh(self) -> Mesh | None:
        """The devices the pack's runs are split over (`sharding.train_mesh`), checked against the batch size."""
        mesh = sharding.train_mesh(len(self.seeds))
        sharding.check_batch_divisible(self.train_cfg.batch_size, mesh)
        return mesh

    def compile_ahead(self) -> None:
        """Lower and compile every program `run` will call, on the shapes and shardings it will call them with,
        without running any: JAX keeps the executables, so `run` then compiles nothing (tested)."""
        mesh = self._mesh()
        progs = self._programs(mesh)
        init_keys, data_keys, eval_keys, active, tokens = self._inputs(mesh)
        init = progs["init"].lower(init_keys, self.hparams, active)
        init.compile()
        state = sharding.abstract_seeds(init.out_info, mesh)  # the initial state's shapes, as `run` splits it
        progs["eval"].lower(state.params, state.rest, eval_keys, self.data, active).compile()
        progs["chunk"].lower(state, data_keys, self.data, active, jnp.asarray(True), jnp.int32(0)).compile()
        if "jacobian" in progs:
            progs["jacobian"].lower(state.params, state.rest, tokens, jax.random.key(PROBE_KEY), active).compile()

    def run(self) -> list[MemberRecord]:
        cfg, probe_cfg = self.train_cfg, self.probe_cfg
        S, M = len(self.seeds), int(self.owner.max()) + 1
        mesh = self._mesh()
        t0 = time.perf_counter()
        progs = self._programs(mesh)
        init_keys, data_keys, eval_keys, active, tokens = self._inputs(mesh)
        state = progs["init"](init_keys, self.hparams, active)
        if self.keep_init:
            self.init_params = jax.tree.map(np.asarray, state.params)
        state = sharding.shard_seeds(state, mesh)
        eval_fn, chunk, chunk_len = progs["eval"], progs["chunk"], self.chunk_len

        def run_jacobian(at_step: int) -> dict | None:
            if "jacobian" not in progs:
                return None
            out = progs["jacobian"](state.params, state.rest, tokens, jax.random.key(PROBE_KEY + at_step), active)
            return jax.tree.map(np.asarray, out)

        def run_eval() -> tuple:
            loss, acc = eval_fn(state.params, state.rest, eval_keys, self.data, active)
            return np.asarray(loss), np.asarray(acc)

        records: list[MemberRecord | None] = [None] * M

        def finish(members: list[int], done: int) -> None:
            """The members' final measurement at `done` (the chunk program's probed step, update off), then
            their runs stop."""
            nonlocal state
            state, scalars, layers = chunk(state, data_keys, self.data, active, jnp.asarray(False), jnp.int32(0))
            final_eval = run_eval()
            at_done = bool(self.jac_steps) and self.jac_steps[-1] == done
            final_jacobian = None if at_done else run_jacobian(done)
            host = jax.tree.map(np.asarray, state._asdict())
            for m in members:
                records[m] = MemberRecord(len(self.chunks), len(self.jac_rows), len(self.eval_rows), done,
                                          jax.tree.map(np.asarray, layers), jax.tree.map(np.asarray, scalars),
                                          final_eval, final_jacobian, host)
            running = ~np.isin(self.owner, members) & host["running"]
            state = state._replace(running=sharding.shard_seeds(jnp.asarray(running), mesh))

        bar = tqdm(total=cfg.steps, desc=self.desc, disable=not cfg.progress or cfg.steps == 0, leave=False,
                   unit="step")
        compile_s, steps_after_first, t_run = None, 0, t0
        done, pending = 0, None  # pending: the previous chunk, read after the next one is dispatched
        while done < cfg.steps and any(r is None for r in records):
            n = min(chunk_len, cfg.steps - done)
            if done == 0 or done // probe_cfg.probe_every != (done - n) // probe_cfg.probe_every:
                jac = run_jacobian(done)
                if jac is not None:
                    self.jac_rows.append(jac)
                    self.jac_steps.append(done)
            state, scalars, layers = chunk(state, data_keys, self.data, active, jnp.asarray(True), jnp.int32(n - 1))
            self.chunks.append([done, n, scalars, layers])
            if compile_s is None:
                jax.block_until_ready(scalars)
                compile_s = time.perf_counter() - t0
                t_run = time.perf_counter()
            else:
                steps_after_first += n
            if pending is not None:
                self._collect(pending, bar)
            pending = self.chunks[-1]
            done += n
            if done % cfg.eval_every == 0 and done < cfg.steps:
                self.eval_rows.append(run_eval())
                self.eval_steps.append(done)
            alive = np.asarray(state.alive)
            dead = [m for m in range(M) if records[m] is None and not alive[self.owner == m].any()]
            if dead:
                finish(dead, done)
        if pending is not None:
            self._collect(pending, bar)
        bar.close()
        run_s = time.perf_counter() - t_run if compile_s is not None else 0.0
        left = [m for m in range(M) if records[m] is None]
        if left:
            finish(left, done)
        if compile_s is None:  # steps == 0: the profile at initialisation is all there is
            compile_s = time.perf_counter() - t0
        self.timing = {"compile_s": float(compile_s), "run_s": float(run_s),
                       "steps_per_s": steps_after_first / run_s if steps_after_first else float("nan"),
                       "runs_packed": float(S)}
        return records  # type: ignore[return-value]

    @staticmethod
    def _collect(entry: list, bar) -> None:
        """A chunk's outputs to the host (in place), and the progress bar advanced."""
        entry[2], entry[3] = jax.tree.map(np.asarray, entry[2]), jax.tree.map(np.asarray, entry[3])
        loss = entry[2]["loss"][:, entry[1] - 1]
        finite = loss[np.isfinite(loss)]  # a diverged run's NaN loss must not hide the others'
        bar.set_postfix(loss=f"{finite.mean():.3f}" if finite.size else "nan")
        bar.update(entry[1])

    def history(self, rec: MemberRecord, mask: np.ndarray, model_cfg: ModelConfig, optim_cfg: OptimConfig,
                train_cfg: TrainConfig, probe_cfg: ProbeConfig) -> History:
        """One member's History: its runs (`mask`) of the pack's records up to where it stopped."""
        runs = lambda tree: jax.tree.map(lambda a: a[mask], tree)  # noqa: E731
        chunks = self.chunks[:rec.chunks]
        if chunks:
            metrics = {k: np.concatenate([c[2][k][mask, :c[1]] for c in chunks], axis=1).T for k in chunks[0][2]}
        else:  # steps == 0: the measurement's scalars stand for step 0
            metrics = {k: v[mask][:, :1].T for k, v in rec.final_scalars.items()}
        layer_rows = [runs(c[3]) for c in chunks if c[3]] + [runs(rec.final_layers)]
        layer_steps = [c[0] for c in chunks if c[3]] + [rec.done]
        jac_rows, jac_steps = [runs(r) for r in self.jac_rows[:rec.jacobians]], self.jac_steps[:rec.jacobians]
        if rec.final_jacobian is not None:
            jac_rows, jac_steps = jac_rows + [runs(rec.final_jacobian)], jac_steps + [rec.done]
        evals = [runs(r) for r in self.eval_rows[:rec.evals]] + [runs(rec.final_eval)]
        eval_steps = self.eval_steps[:rec.evals] + [rec.done]
        host = runs(rec.host)
        layers, jacobian = stack_dicts(layer_rows), stack_dicts(jac_rows)
        init_params = None if self.init_params is None else runs(self.init_params)
        state = {k: host[k] for k in ("params", "rest", "opt_state")}
        if self.active is not None:
            layers = padding.unpad_layers(layers, self.active)
            jacobian = padding.unpad_layers(jacobian, self.active)
            state = {k: padding.unpad_state(v, self.active) for k, v in state.items()}
            init_params = None if init_params is None else padding.unpad_state(init_params, self.active)
        seeds = [s for s, keep in zip(self.seeds, mask) if keep]
        return History(
            seeds=seeds,
            steps=np.arange(metrics["loss"].shape[0]),
            metrics=metrics,
            layer_steps=np.asarray(layer_steps),
            layers=layers,
            jacobian_steps=np.asarray(jac_steps, dtype=int),
            jacobian=jacobian,
            eval_steps=np.asarray(eval_steps),
            eval_loss=np.stack([r[0] for r in evals]),
            eval_accuracy=np.stack([r[1] for r in evals]),
            diverged=host["diverged_step"] >= 0,
            diverged_step=host["diverged_step"],
            nonfinite=nonfinite_records(host["nonfinite_step"], host["nonfinite_what"], host["nonfinite_layer"]),
            config={"model": to_dict(model_cfg), "optim": to_dict(optim_cfg), "train": to_dict(train_cfg),
                    "probe": to_dict(probe_cfg),
                    "data": {"fingerprint": self.data.corpus_fingerprint,
                             "context_free_loss": self.data.context_free_loss}},
            timing=dict(self.timing),
            init_params=init_params, **state,
        )


def probe_cfg_any(probe_cfg: ProbeConfig) -> bool:
    """Whether the first step of each chunk computes per-layer probes at all."""
    return probe_cfg.grads or probe_cfg.activations or probe_cfg.attention or probe_cfg.alignment
