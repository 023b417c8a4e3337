"""The pure training step and the compiled multi-step chunk.

`train_step(state, batch, key, ...) -> (state, metrics)` is one optimizer step for one model (one run: a
seed of a cell). `make_chunk` builds the one jitted program the loop calls: a step with per-layer probes,
then up to `n - 1` bare steps inside one `lax.scan` (running many steps per dispatch keeps the device busy
and is ~2× faster on CPU), all vmapped over runs, with the state donated. Metrics leave the device once per
chunk. The same program takes the final measurement (its probed step with the update off and no bare
steps) and a shorter last chunk, so a model structure compiles one chunk whatever the step count.

Per-run hyperparameters are data in the state (peak learning rate and weight decay in the optimizer's
injected hyperparameters, the clip threshold in `TrainState.clip_value`), so cells that differ only in them
train side by side in one program (jaxnorm.trainer packs them).

Divergence is data, not an exception: a run whose loss turns non-finite or exceeds
`divergence_factor × initial loss` is frozen (its parameters stop changing) and its step recorded.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jaxnorm import model as model_lib
from jaxnorm import optim, padding, probes, programs
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig


class TrainState(NamedTuple):
    """Everything that changes during training, for one seed (vmapped: leading axis S on each leaf)."""

    params: Any
    rest: Any                 # non-parameter model state (running stats, power-iteration vectors)
    opt_state: Any
    step: jax.Array           # int32, the number of optimizer steps taken
    alive: jax.Array          # bool, False once the run diverged (then parameters are frozen)
    init_loss: jax.Array      # float32, loss of the first step (divergence threshold base)
    diverged_step: jax.Array  # int32, step at which the run diverged, -1 if it did not
    nonfinite_step: jax.Array   # int32, first step with a non-finite loss/gradient/update, -1 if none
    nonfinite_what: jax.Array   # int32, a jaxnorm.history.NONFINITE_CODES key
    nonfinite_layer: jax.Array  # int32, first layer whose gradient was non-finite, -1 if none/not per layer
    clip_value: jax.Array     # float32, the clip threshold (inf: no clipping, for a run packed with clipped ones)
    running: jax.Array        # bool, False once the host stopped this run (its cell ended; the state is kept)


def cross_entropy(logits_BxTxV: jax.Array, batch: dict[str, jax.Array], z_loss: float) -> tuple[jax.Array, dict]:
    """Weighted cross-entropy plus z-loss c·log²Z (Wortsman et al. 2023, "Small-scale proxies")."""
    chex.assert_rank(logits_BxTxV, 3)
    chex.assert_shape([batch["targets"], batch["weights"]], logits_BxTxV.shape[:2])
    logits = logits_BxTxV.astype(jnp.float32)
    log_z_BxT = jax.nn.logsumexp(logits, axis=-1)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    w = batch["weights"]
    denom = jnp.maximum(jnp.sum(w), 1.0)
    ce = jnp.sum(w * ce_BxT) / denom
    zl = z_loss * jnp.sum(w * jnp.square(log_z_BxT)) / denom
    acc = jnp.sum(w * (jnp.argmax(logits, -1) == batch["targets"])) / denom
    return ce + zl, {"loss": ce, "accuracy": acc, "log_z": jnp.sum(w * log_z_BxT) / denom}


def _global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree).astype(jnp.float32)


class StepFns(NamedTuple):
    """The per-run pure functions of one configuration, built once and cached."""

    init_state: Callable[..., TrainState]                     # (key, hparams, active_depth=None) -> state
    train_step: Callable[..., tuple[TrainState, dict]]        # (state, batch, key, with_probes, ...) -> (state, metrics)
    graphdef: Any


def run_hparams(optim_cfg: OptimConfig, clip_kind: str | None = None) -> dict[str, float]:
    """A run's data hyperparameters: {lr, weight_decay, clip_value}. `clip_kind`: the clip its program
    applies (default its own); a run without clipping packed into a clipping program gets an infinite
    threshold."""
    no_clip = optim_cfg.clip == "none" and (clip_kind or "none") != "none"
    return {"lr": optim_cfg.lr, "weight_decay": optim_cfg.weight_decay,
            "clip_value": float("inf") if no_clip else optim_cfg.clip_value}


def build_step_fns(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig,
                   probe_cfg: ProbeConfig) -> StepFns:
    """`optim_cfg`'s learning rate, weight decay and clip threshold are ignored: they are per-run data."""
    graphdef = model_lib.graphdef_of(model_cfg)
    tx = optim.make_optimizer(optim_cfg, max(train_cfg.steps, 1))
    L, D = model_cfg.depth, model_cfg.d_model

    def init_state(key: jax.Array, hparams: dict[str, jax.Array],
                   active_depth: jax.Array | None = None) -> TrainState:
        _, params, rest = model_lib.init(model_cfg, key, active_depth)
        i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
        opt_state = optim.init_state(tx, params, hparams["lr"], hparams["weight_decay"])
        return TrainState(params, rest, opt_state, i32(0), jnp.asarray(True),
                          jnp.asarray(jnp.nan, jnp.float32), i32(-1), i32(-1), i32(0), i32(-1),
                          jnp.asarray(hparams["clip_value"], jnp.float32), jnp.asarray(True))

    def loss_fn(params, deltas, rest, batch, active_depth):
        # deltas: None, or zeros added to every layer's input and to the stack's output (x_L), whose
        # gradients are ∂loss/∂x_l and ∂loss/∂x_L.
        deltas_LxBxTxD, delta_out_BxTxD = deltas if deltas is not None else (None, None)
        logits, diags, new_rest = model_lib.apply(graphdef, params, rest, batch["inputs"], train=True,
                                                  deltas_LxBxTxD=deltas_LxBxTxD, active_depth=active_depth,
                                                  delta_out_BxTxD=delta_out_BxTxD)
        total, metrics = cross_entropy(logits, batch, train_cfg.z_loss)
        return total, (metrics, diags, new_rest)

    def train_step(state: TrainState, batch: dict, key: jax.Array, with_probes: bool,
                   apply_update: bool | jax.Array = True,
                   active_depth: jax.Array | None = None) -> tuple[TrainState, dict]:
        """`apply_update` (may be traced): False measures the current parameters and leaves the state as it
        was. `active_depth`: a padded model's, unbatched (see model.Encoder)."""
        del key  # no stochastic layers; kept so the step's signature is stable
        B, T = batch["inputs"].shape
        deltas = (jnp.zeros((L, B, T, D), jnp.float32), jnp.zeros((B, T, D), jnp.float32)) if with_probes else None
        argnums = (0, 1) if with_probes else 0
        (_, (metrics, diags, new_rest)), g = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=True)(
            state.params, deltas, state.rest, batch, active_depth)
        grads, (act_grads, out_act_grad) = g if with_probes else (g, (None, None))

        clip = optim.clip_transform(optim_cfg.clip, state.clip_value)
        clipped, _ = clip.update(grads, clip.init(state.params), state.params)
        updates, new_opt_state = tx.update(clipped, state.opt_state, state.params)
        updates = padding.mask_inactive(updates, padding.active_mask(state.rest))  # padded models only
        new_params = optax.apply_updates(state.params, updates)

        # One pass of squared norms per leaf gives the global norm, its finiteness and the first bad layer
        # (a NaN/Inf anywhere makes its layer's sum non-finite). Fewer reductions = faster compiles.
        sq_L, sq_other = probes.squared_norms(grads)
        gnorm = jnp.sqrt(jnp.sum(sq_L) + sq_other)
        gnorm_clipped, update_norm = _global_norm(clipped), _global_norm(updates)
        metrics = dict(metrics, grad_norm=gnorm, grad_norm_clipped=gnorm_clipped,
                       clipped=gnorm_clipped < gnorm * (1.0 - 1e-6), update_norm=update_norm,
                       lr=optim.learning_rate(new_opt_state, state.step, optim_cfg, max(train_cfg.steps, 1)))

        # Divergence and non-finite bookkeeping: the first occurrence is kept.
        loss = metrics["loss"]
        init_loss = jnp.where(state.step == 0, loss, state.init_loss)
        loss_ok, grads_ok, updates_ok = jnp.isfinite(loss), jnp.isfinite(gnorm), jnp.isfinite(update_norm)
        diverged_now = state.alive & (~loss_ok | (loss > train_cfg.divergence_factor * init_loss))
        what = jnp.where(~loss_ok, 1, jnp.where(~grads_ok, 2, jnp.where(~updates_ok, 3, 0)))
        first_bad = (state.nonfinite_step < 0) & (what > 0)
        bad_layer = probes.first_bad_layer(sq_L)

        keep = state.alive & ~diverged_now
        choose = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            params=choose(new_params, state.params),
            rest=choose(new_rest, state.rest),
            opt_state=choose(new_opt_state, state.opt_state),
            step=state.step + 1,
            alive=state.alive & ~diverged_now,
            init_loss=init_loss,
            diverged_step=jnp.where(diverged_now, state.step, state.diverged_step),
            nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
            nonfinite_what=jnp.where(first_bad, what, state.nonfinite_what),
            nonfinite_layer=jnp.where(first_bad & (what == 2), bad_layer, state.nonfinite_layer),
            clip_value=state.clip_value,
            running=state.running,
        )
        # A measurement (no update) or a stopped run leaves everything as it was, step counter included.
        go = jnp.asarray(apply_update) & state.running
        new_state = jax.tree.map(lambda n, o: jnp.where(go, n, o), new_state, state)
        if with_probes:
            metrics["layers"] = probes.layer_stats(state.params, grads, updates, act_grads, diags, probe_cfg,
                                                   out_act_grad_BxTxD=out_act_grad)
            if probe_cfg.amplification:  # output change caused by this very update (Liu et al. 2020)
                metrics["layers"]["amplification"] = probes.amplification(
                    graphdef, state.params, new_params, state.rest, batch["inputs"], active_depth)
        return new_state, metrics

    return StepFns(init_state, train_step, graphdef)


def cached_step_fns(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig,
                    probe_cfg: ProbeConfig) -> StepFns:
    """Step functions per configuration (`jaxnorm.programs`); the caller normalises the per-run data
    (learning rate, weight decay, clip threshold) out of the key, and the StepFns own their compiled programs."""
    configs = (model_cfg, optim_cfg, train_cfg, probe_cfg)
    return programs.cached("step_fns", configs, None, lambda: build_step_fns(*configs))


def make_chunk(fns: StepFns, batch_fn: Callable, n_steps: int, with_probes: bool,
               seed_axis: str | None = None, compiler_options: dict | None = None) -> Callable:
    """jit(vmap over runs): one (probed) step, then `n_bare` ≤ n_steps − 1 bare steps; per-step scalars [S, n].

    Called as chunk(state, data_keys, data, active_depth, apply_first, n_bare). `data` (a Dataset pytree)
    is an argument rather than a closed-over constant, and `batch_fn(data, key)` draws a batch from it.
    `active_depth` (a padded model's, else None), `apply_first` (bool: False measures the parameters without
    updating them) and `n_bare` (int32; steps past it are skipped and their scalars are zeros) are the same
    for every run, so one program serves every depth, the final measurement and a short last chunk.
    `seed_axis`: the mesh axis the runs are split over (`jaxnorm.sharding.seed_axis_name`)."""

    def one_seed(state: TrainState, data_key: jax.Array, data: Any, active_depth, apply_first, n_bare):
        batch_fn_ = functools.partial(batch_fn, data)
        def keyed(step):
            return jax.random.fold_in(data_key, step)

        def step(s, probed, apply=True):
            return fns.train_step(s, batch_fn_(keyed(s.step)), keyed(s.step), probed, apply, active_depth)

        state, first = step(state, with_probes, apply_first)
        layers = first.pop("layers", {})

        def body(s, i):
            def skip(s):
                _, m = jax.eval_shape(lambda s: step(s, False), s)
                return s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), m)
            # `i < n_bare` is the same for every run, so under vmap this stays a branch that skips the step.
            return jax.lax.cond(i < n_bare, lambda s: step(s, False), skip, s)

        if n_steps == 1:  # nothing but the probed step (a steps = 0 cell): no bare step to trace or compile
            return state, jax.tree.map(lambda a: a[None], first), layers
        state, rest_metrics = jax.lax.scan(body, state, jnp.arange(n_steps - 1))
        scalars = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest_metrics)
        return state, scalars, layers

    return programs.jit(jax.vmap(one_seed, in_axes=(0, 0, None, None, None, None), spmd_axis_name=seed_axis),
                        donate_argnums=0, compiler_options=compiler_options, name="chunk")
