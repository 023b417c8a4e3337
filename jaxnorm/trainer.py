"""One training run ("cell"): `train(model_cfg, optim_cfg, train_cfg, probe_cfg) -> History`.

S seeds train together in one compiled program (`jax.vmap`). The loop dispatches a chunk of
`log_every` steps, then reads the previous chunk's metrics while the device works on the next, so the
host never stalls the device except at evaluation and Jacobian-probe points. A learning rate lives in
the optimizer state, so cells that differ only in learning rate reuse one compiled program.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxnorm import model as model_lib
from jaxnorm import padding, probes, programs, sharding
from jaxnorm.config import (ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig, task_model_config,
                            to_dict)
from jaxnorm.data import Dataset, make_dataset
from jaxnorm.history import History, nonfinite_records, stack_dicts
from jaxnorm.step import StepFns, cached_step_fns, cross_entropy, make_chunk, make_measure

# Seeds' probe batch comes from a key independent of their training data.
PROBE_KEY = 1_000_003


def one_shot_options(runs_once: bool) -> dict | None:
    """XLA options for a program that runs once or a few times per cell (initialisation, and with steps = 0
    every program: the profile at initialisation). There compiling is the whole cost, and on CPU XLA's
    lowest backend optimisation level compiles 2-3x faster; the arithmetic is the same up to float32
    rounding (the CPU's matmuls are library calls either way). Other backends keep their defaults."""
    return {"xla_backend_optimization_level": 0} if runs_once and jax.default_backend() == "cpu" else None


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
    each shape once. `mesh`: the cell's `sharding.train_mesh`. `once`: the program runs once per cell (see
    `one_shot_options`)."""

    def build() -> Callable:
        batch_fn = lambda d, k: sharding.shard_batch(d.batch(k, batch_size), mesh)  # noqa: E731
        options, axis = one_shot_options(once), sharding.seed_axis_name(mesh)
        if kind == "chunk":
            return make_chunk(fns, batch_fn, *args, seed_axis=axis)
        if kind == "measure":
            return make_measure(fns, batch_fn, options, seed_axis=axis)
        if kind == "eval":
            return _make_eval(fns, batch_size, *args, compiler_options=options)
        if kind == "init":  # (keys, lr, active depth of a padded model or None)
            return programs.jit(jax.vmap(fns.init_state, in_axes=(0, None, None)), compiler_options=options)
        raise ValueError(f"program kind: invalid value {kind!r}; allowed: chunk, measure, eval, init")

    return programs.cached("train", fns, (kind, jax.tree.structure(data), batch_size, mesh, once, *args), build)


def _make_eval(fns: StepFns, batch_size: int, eval_batches: int, z_loss: float,
               compiler_options: dict | None = None) -> Callable:
    """jit(vmap over seeds): held-out loss and accuracy over `eval_batches` batches; (params, rest, key, data)."""

    def one_seed(params, rest, key, data):
        def one(k):
            batch = data.batch(k, batch_size, "eval")
            logits, _, _ = model_lib.apply(fns.graphdef, params, rest, batch["inputs"], train=False)
            return cross_entropy(logits, batch, z_loss)[1]
        m = jax.lax.map(one, jax.random.split(key, eval_batches))
        return m["loss"].mean(), m["accuracy"].mean()

    return programs.jit(jax.vmap(one_seed, in_axes=(0, 0, None, None)), compiler_options=compiler_options)


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
    the unpadded run's (per-layer arrays cut to model_cfg.depth layers), up to float32 rounding. Worth it
    when compiling dominates (steps = 0); the padded layers' compute is spent on every step.
    `keep_init`: also keep each seed's initial parameters (History.init_params).

    >>> from jaxnorm import ModelConfig, OptimConfig, TrainConfig, train
    >>> h = train(ModelConfig(depth=2, d_model=32, num_heads=2, d_ff=64), OptimConfig(lr=3e-3),
    ...           TrainConfig(task="copy", steps=20, seq_len=8, batch_size=8, progress=False))
    >>> h.metrics["loss"].shape, h.layers["grad_norm/all"].shape
    ((20, 1), (3, 1, 2))
    """
    probe_cfg = ProbeConfig() if probe_cfg is None else probe_cfg
    check_config_types(model_cfg, optim_cfg, train_cfg, probe_cfg)
    data = make_dataset(train_cfg)
    model_cfg = resolve_config(model_cfg, train_cfg, data)
    S, B = train_cfg.seeds, train_cfg.batch_size
    seeds = [train_cfg.seed + s for s in range(S)]
    run_cfg, active = model_cfg, None
    if pad_to is not None:  # also at pad_to == depth: that cell then shares the shallower cells' programs
        run_cfg, active = padding.padded_config(model_cfg, pad_to), model_cfg.depth
    fns = cached_step_fns(run_cfg, optim_cfg.replace(lr=1.0), _step_key_config(train_cfg), probe_cfg)

    keys = jnp.stack([jax.random.key(s) for s in seeds])
    init_keys, data_keys = jax.vmap(lambda k: jax.random.split(k))(keys).swapaxes(0, 1)
    mesh = sharding.train_mesh(S)
    sharding.check_batch_divisible(B, mesh)
    t0 = time.perf_counter()
    once = train_cfg.steps == 0  # the profile at initialisation: every program below runs exactly once
    state = _program("init", fns, data, B, mesh, once=True)(init_keys, jnp.float32(optim_cfg.lr),
                                                       None if active is None else jnp.int32(active))
    init_params = jax.tree.map(np.asarray, state.params) if keep_init else None
    state, data_keys = sharding.shard_seeds((state, data_keys), mesh)
    tokens = probe_tokens(data, probe_cfg)
    eval_fn = _program("eval", fns, data, B, mesh, train_cfg.eval_batches, train_cfg.z_loss, once=once)
    eval_key = jax.random.key(train_cfg.seed + 7919)

    step_metrics: list[dict[str, np.ndarray]] = []
    layer_steps, layer_rows, jac_steps, jac_rows, eval_steps, eval_rows = [], [], [], [], [], []

    def run_jacobian(at_step: int) -> None:
        if probe_cfg.jacobian or probe_cfg.spectrum:
            out = probes.jacobian_stats_seeds(fns.graphdef, state.params, state.rest, tokens,
                                              jax.random.key(PROBE_KEY + at_step), probe_cfg,
                                              one_shot_options(once))
            jac_rows.append(jax.tree.map(np.asarray, out))
            jac_steps.append(at_step)

    def run_eval(at_step: int) -> None:
        loss, acc = eval_fn(state.params, state.rest, eval_key, data)
        eval_rows.append((np.asarray(loss), np.asarray(acc)))
        eval_steps.append(at_step)

    bar = tqdm(total=train_cfg.steps, desc=desc or f"{model_cfg.block} L={model_cfg.depth}",
               disable=not train_cfg.progress or train_cfg.steps == 0, leave=False, unit="step")
    compile_s, steps_after_first = None, 0
    done = 0
    pending = None  # the previous chunk's outputs, read after the next chunk is dispatched
    while done < train_cfg.steps:
        n = min(train_cfg.log_every, train_cfg.steps - done)
        if done == 0 or done // probe_cfg.probe_every != (done - n) // probe_cfg.probe_every:
            run_jacobian(done)
        chunk = _program("chunk", fns, data, B, mesh, n, probe_cfg_any(probe_cfg))
        state, scalars, layers = chunk(state, data_keys, data)
        if compile_s is None:
            jax.block_until_ready(scalars)
            compile_s = time.perf_counter() - t0
            t_run = time.perf_counter()
        else:
            steps_after_first += n
        if pending is not None:
            _collect(pending, step_metrics, layer_steps, layer_rows, bar)
        pending = (done, scalars, layers)
        done += n
        if done % train_cfg.eval_every == 0 and done < train_cfg.steps:
            run_eval(done)
        if not bool(np.any(np.asarray(state.alive))):
            break
    if pending is not None:
        _collect(pending, step_metrics, layer_steps, layer_rows, bar)
    bar.close()
    run_s = time.perf_counter() - t_run if compile_s is not None else 0.0
    if compile_s is None:  # steps == 0: the profile at initialisation is all there is
        compile_s = time.perf_counter() - t0

    # The end-of-training profile: probes of the final parameters (no update), eval, Jacobians.
    final_layers, final_scalars = _program("measure", fns, data, B, mesh, once=once)(state, data_keys, data)
    layer_rows.append(jax.tree.map(np.asarray, final_layers))
    layer_steps.append(done)
    run_eval(done)
    if not jac_steps or jac_steps[-1] != done:
        run_jacobian(done)

    if step_metrics:
        metrics = {k: np.concatenate([m[k] for m in step_metrics], axis=1).T for k in step_metrics[0]}
    else:  # steps == 0: the measurement pass's scalars stand for step 0
        metrics = {k: np.asarray(v)[None] for k, v in final_scalars.items()}
    host = jax.tree.map(np.asarray, state._asdict())
    layers, jacobian = stack_dicts(layer_rows), stack_dicts(jac_rows)
    if active is not None:
        layers = padding.unpad_layers(layers, active)
        jacobian = padding.unpad_layers(jacobian, active)
    return History(
        seeds=seeds,
        steps=np.arange(metrics["loss"].shape[0]),
        metrics=metrics,
        layer_steps=np.asarray(layer_steps),
        layers=layers,
        jacobian_steps=np.asarray(jac_steps, dtype=int),
        jacobian=jacobian,
        eval_steps=np.asarray(eval_steps),
        eval_loss=np.stack([r[0] for r in eval_rows]),
        eval_accuracy=np.stack([r[1] for r in eval_rows]),
        diverged=host["diverged_step"] >= 0,
        diverged_step=host["diverged_step"],
        nonfinite=nonfinite_records(host["nonfinite_step"], host["nonfinite_what"], host["nonfinite_layer"]),
        config={"model": to_dict(model_cfg), "optim": to_dict(optim_cfg), "train": to_dict(train_cfg),
                "probe": to_dict(probe_cfg), "data": {"fingerprint": getattr(data, "corpus_fingerprint", None)}},
        timing={"compile_s": float(compile_s), "run_s": float(run_s),
                "steps_per_s": steps_after_first / run_s if steps_after_first else float("nan")},
        params=host["params"], rest=host["rest"], opt_state=host["opt_state"], init_params=init_params,
    )


def probe_cfg_any(probe_cfg: ProbeConfig) -> bool:
    """Whether the first step of each chunk computes per-layer probes at all."""
    return probe_cfg.grads or probe_cfg.activations or probe_cfg.attention or probe_cfg.alignment


def _collect(pending, step_metrics, layer_steps, layer_rows, bar) -> None:
    start, scalars, layers = pending
    host = jax.tree.map(np.asarray, scalars)
    step_metrics.append(host)
    if layers:
        layer_rows.append(jax.tree.map(np.asarray, layers))
        layer_steps.append(start)
    n = host["loss"].shape[1]
    loss = host["loss"][:, -1]
    finite = loss[np.isfinite(loss)]  # a diverged seed's NaN loss must not hide the others'
    bar.set_postfix(loss=f"{finite.mean():.3f}" if finite.size else "nan")
    bar.update(n)

