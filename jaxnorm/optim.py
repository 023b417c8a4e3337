"""The optax chain of one cell: [clip] -> optimizer -> learning-rate schedule.

Two rules shape this file:

* The peak learning rate and the weight decay are *data*, not program: they live in the optimizer state
  (``optax.inject_hyperparams``), and the schedule is a multiplier in [0, 1] applied after the optimizer
  (``optax.scale_by_schedule``). A learning-rate sweep therefore reuses one compiled step; nothing built
  here reads ``OptimConfig.lr`` — only :func:`init_state` does.
* Parameters under a ``blocks`` path key are stacked with a leading layer axis ``[L, ...]``. Anything that
  reduces over a leaf (AGC's unit norms, Adafactor's factored moments and block RMS) must treat each layer
  as its own tensor, or layers are silently mixed. Everything is per-example, so the whole chain can be
  ``jax.vmap``-ed over a leading seed axis from outside.

Typical use::

    tx = optax.chain(make_clip(cfg), make_optimizer(cfg, total_steps))
    opt_state = init_state(tx, params, cfg.lr, cfg.weight_decay)   # works under jax.vmap over params
    lr_now = learning_rate(opt_state, step, cfg, total_steps)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxnorm.config import OptimConfig
from jaxnorm.paths import path_names

STACK_KEY = "blocks"                       # path key whose leaves carry a leading layer axis
DECAYED_LEAVES = ("kernel", "embedding")   # the only leaves that get weight decay
AGC_EPS = 1e-3                             # Brock et al.'s floor on ‖θ‖ (lets zero-init weights move)
MAX_CONSECUTIVE_SKIPS = 2**30              # apply_if_finite: skip non-finite updates for (practically) ever

Schedule = Callable[[jax.Array], jax.Array]


def _is_stacked(path: tuple[Any, ...]) -> bool:
    return STACK_KEY in path_names(path)


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: those whose last path key is ``kernel`` or ``embedding``.

    Norm scales/biases, biases and scalar gates (ReZero's α, Admin's ω, cosine attention's τ) are never
    decayed: decay would pull them toward 0, which for a gate or a norm scale changes the architecture."""
    def leaf(path, _):
        names = path_names(path)
        return bool(names) and names[-1] in DECAYED_LEAVES
    return jax.tree_util.tree_map_with_path(leaf, params)


# --- clipping ----------------------------------------------------------------------------------------


def adaptive_grad_clip(clipping: float | jax.Array, eps: float = AGC_EPS) -> optax.GradientTransformation:
    """Unit-wise adaptive gradient clipping, Brock et al. 2021 ("High-Performance Large-Scale Image
    Recognition Without Normalization", §4.1): g ← g · min(1, λ·max(‖θ‖ᵤ, ε)/‖g‖ᵤ).

    A unit is a column over the fan-in axis (-2) of a matrix, and a single entry of a vector or scalar; for
    stacked leaves the leading layer axis is never part of a unit. ``optax.adaptive_grad_clip`` with explicit
    axes: its default reduces over every axis but the last of a ≥3-d leaf (the layer axis of a stacked
    ``[L, in, out]`` kernel) and over a whole vector."""
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: "fan_in" if jnp.ndim(x) - int(_is_stacked(path)) >= 2 else "entry", params)

    return optax.multi_transform({"fan_in": optax.adaptive_grad_clip(clipping, eps, axis=-2),
                                  "entry": optax.adaptive_grad_clip(clipping, eps, axis=())}, labels)


def clip_transform(kind: str, threshold: float | jax.Array) -> optax.GradientTransformation:
    """The stateless clipping of ``kind`` (OptimConfig.clip) at ``threshold``, which may be traced: cells
    that differ only in their threshold then share one program, and ``none`` packs with the others as an
    infinite threshold (every clip here is then exactly the identity on finite gradients)."""
    if kind == "none":
        return optax.identity()
    if kind == "global_norm":
        return optax.clip_by_global_norm(threshold)
    if kind == "value":
        return optax.clip(threshold)
    if kind == "agc":
        return adaptive_grad_clip(threshold)
    raise ValueError(f"OptimConfig.clip: invalid value {kind!r}")  # unreachable: config validates


def make_clip(cfg: OptimConfig) -> optax.GradientTransformation:
    """The stateless clipping chained before the optimizer, from ``cfg.clip`` and ``cfg.clip_value``."""
    return clip_transform(cfg.clip, cfg.clip_value)


# --- schedules ---------------------------------------------------------------------------------------


def make_schedule(cfg: OptimConfig, total_steps: int) -> Schedule:
    """The learning-rate multiplier m(step) ∈ [0, 1]; the lr of update number ``step`` (0-based) is
    peak · m(step). Linear warmup starts at 0, as optax's ``warmup_*`` schedules do.

    * ``constant``: 1.
    * ``warmup_constant``: step/W for step < W, then 1.
    * ``warmup_cosine``: warmup, then ½(1 + cos(π·(step−W)/(total−W))), reaching 0 at ``total_steps``
      (Loshchilov & Hutter 2017, SGDR, without restarts; ``optax.warmup_cosine_decay_schedule``). With
      total ≤ W the decay takes one step.
    * ``inverse_sqrt``: warmup, then √(W/step) (Vaswani et al. 2017, §5.3). With W = 0 it is
      1/√max(step, 1)."""
    w = cfg.warmup_steps
    kind = cfg.schedule
    if kind == "constant":
        schedule = optax.constant_schedule(1.0)
    elif kind == "warmup_constant":
        # optax's linear_schedule with 0 steps holds its *initial* value (0): W = 0 needs no warmup at all.
        schedule = (optax.join_schedules([optax.linear_schedule(0.0, 1.0, w), optax.constant_schedule(1.0)], [w])
                    if w > 0 else optax.constant_schedule(1.0))
    elif kind == "warmup_cosine":
        # optax refuses a cosine decay of ≤ 0 steps; at least one keeps total ≤ W runnable.
        schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, w, max(total_steps, w + 1), end_value=0.0)
    elif kind == "inverse_sqrt":
        # Hand-written: optax has no inverse-square-root schedule.
        def schedule(step):
            warmup = jnp.minimum(step / w, 1.0) if w > 0 else jnp.ones_like(step)
            return jnp.where(step < w, warmup, jnp.sqrt(max(w, 1) / jnp.maximum(step, 1.0)))
    else:
        raise ValueError(f"OptimConfig.schedule: invalid value {kind!r}")

    def multiplier(step):
        step = jnp.asarray(step, jnp.float32)
        # float32 whatever the schedule returns (optax's constant gives a Python float), like the step.
        return jnp.broadcast_to(jnp.asarray(schedule(step), jnp.float32), step.shape)

    return multiplier


# --- optimizers --------------------------------------------------------------------------------------


def per_layer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Apply ``tx`` to each layer of the stacked ``blocks`` leaves separately (vmap over the layer axis),
    and normally to every other leaf — for transformations that reduce over a whole leaf."""
    def init(params):
        # vmap refuses a tree without leaves (a model with no stacked blocks): nothing to map over then.
        return jax.vmap(tx.init)(params) if jax.tree_util.tree_leaves(params) else tx.init(params)

    def update(updates, state, params=None):
        if not jax.tree_util.tree_leaves(updates):
            return tx.update(updates, state, params)
        return jax.vmap(tx.update)(updates, state, params)

    stacked_tx = optax.GradientTransformation(init, update)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "stacked" if _is_stacked(path) else "flat", params)

    return optax.multi_transform({"stacked": stacked_tx, "flat": tx}, labels)


def _adafactor(learning_rate, weight_decay: float) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern 2018; ``optax.adafactor``) with optax's defaults, per layer, and weight
    decay coupled to the learning rate like optax's adamw/lion: u ← −lr·(adafactor(g) + wd·θ).

    optax's own ``weight_decay_rate`` is added *after* the lr (−(lr·u + wd·θ)), so the same
    ``OptimConfig.weight_decay`` would mean a 100× stronger decay than for adamw at lr=1e-2."""
    return optax.chain(
        per_layer(optax.adafactor(learning_rate=None)),   # ends in scale(-1): a descent direction
        optax.add_decayed_weights(-weight_decay, decay_mask),
        optax.scale(learning_rate))


def _base_optimizer(cfg: OptimConfig) -> Callable[..., optax.GradientTransformation]:
    """The optimizer as a function of its (peak) learning rate and weight decay, for
    ``optax.inject_hyperparams`` (which binds by argument name): both are data, so cells differing only in
    them share one program. Optimizers without weight decay ignore it."""
    o, mask = cfg.optimizer, decay_mask

    def build(learning_rate, weight_decay):
        wd = weight_decay
        if o == "adamw":  # Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"
            return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=mask)
        if o == "adam":  # Kingma & Ba 2015
            return optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
        if o == "rmsprop":  # Tieleman & Hinton 2012 (lecture 6.5); b2 decays the squared-gradient average
            # Bias-corrected like Adam's second moment: uncorrected, the average starts at 0 and every step is
            # 1/√(1 − b2^t) times what the average intends, 32× at step 1 and still 2.4× at step 200 with
            # b2 = 0.999, so that a comparison at equal learning rate would mostly compare that transient.
            return optax.rmsprop(learning_rate, decay=cfg.b2, eps=cfg.eps, bias_correction=True)
        if o == "sgd":  # heavy ball (Polyak 1964) with momentum b1; b1 = 0 keeps no momentum buffer
            return optax.sgd(learning_rate, momentum=cfg.b1 or None)
        if o == "lion":  # Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"
            return optax.lion(learning_rate, b1=cfg.b1, b2=cfg.b2, weight_decay=wd, mask=mask)
        if o == "adafactor":
            return _adafactor(learning_rate, wd)
        raise ValueError(f"OptimConfig.optimizer: invalid value {o!r}")  # unreachable: config validates

    return build


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The optimizer, without clipping (chain :func:`make_clip` in front).

    update = peak_lr · m(step) · optimizer_direction, where peak_lr is an injected hyperparameter (set by
    :func:`init_state`) and m is :func:`make_schedule`'s multiplier. For adamw this equals
    ``optax.adamw(peak_lr · m)`` exactly, decoupled weight decay included, since optax's adamw is
    −lr·(adam(g) + wd·θ). The structure does not depend on ``cfg.lr``. With ``cfg.skip_nonfinite`` the
    whole thing is wrapped in ``optax.apply_if_finite``: a step with a non-finite gradient leaves params,
    moments and schedule step unchanged."""
    # The placeholder lr (1.0) only fixes the state's structure; float32 so that init_state's value has
    # the identical aval (dtype and weak type) and a new lr never retraces.
    base = optax.inject_hyperparams(_base_optimizer(cfg), hyperparam_dtype=jnp.float32)(
        learning_rate=1.0, weight_decay=0.0)
    tx = optax.chain(base, optax.scale_by_schedule(make_schedule(cfg, total_steps)))
    if cfg.skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=MAX_CONSECUTIVE_SKIPS)
    return tx


def init_state(tx: optax.GradientTransformation, params: Any, lr: float | jax.Array,
               weight_decay: float | jax.Array) -> Any:
    """``tx.init(params)`` with the peak learning rate and weight decay written into the injected
    hyperparameters.

    ``tx`` may be any chain containing one :func:`make_optimizer`. Works under ``jax.vmap`` over params
    (``lr`` and ``weight_decay`` may then be per-seed arrays too)."""
    state = tx.init(params)
    return optax.tree_utils.tree_set(state, learning_rate=jnp.asarray(lr, jnp.float32),
                                     weight_decay=jnp.asarray(weight_decay, jnp.float32))


def peak_learning_rate(opt_state: Any) -> jax.Array:
    """The injected peak learning rate held in ``opt_state``."""
    return optax.tree_utils.tree_get(opt_state, "learning_rate")


def learning_rate(opt_state: Any, step: int | jax.Array, cfg: OptimConfig, total_steps: int) -> jax.Array:
    """The effective learning rate of update number ``step`` (0-based): peak · m(step), for logging.

    The peak comes from ``opt_state``; the schedule's shape from ``cfg`` and ``total_steps`` (the same
    arguments given to :func:`make_optimizer`), since a schedule function cannot live in a pytree."""
    return peak_learning_rate(opt_state) * make_schedule(cfg, total_steps)(step)
