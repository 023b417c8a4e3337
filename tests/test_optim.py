"""jaxnorm.optim: every name builds and steps; clipping and schedules vs hand/numpy formulas; the
peak lr lives in the state (no retrace); weight decay is masked; non-finite steps are skipped."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm import optim
from jaxnorm.config import CLIPS, OPTIMIZERS, SCHEDULES, OptimConfig

L = 3


def tiny_params():
    """A tree shaped like the model's: stacked `blocks` leaves with a leading layer axis L."""
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "embed": {"embedding": jax.random.normal(k[0], (7, 4))},
        "blocks": {
            "mlp": {"kernel": jax.random.normal(k[1], (L, 4, 5)), "bias": jnp.full((L, 5), 0.1)},
            "norm": {"scale": jnp.ones((L, 4)), "bias": jnp.zeros((L, 4))},
            "gate": jnp.full((L,), 0.5),
        },
        "head": {"kernel": jax.random.normal(k[2], (4, 7))},
    }


def tiny_grads(scale=1.0):
    ps = tiny_params()
    keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(ps)))
    leaves = [scale * jax.random.normal(kk, x.shape) for kk, x in zip(keys, jax.tree.leaves(ps))]
    return jax.tree.unflatten(jax.tree.structure(ps), leaves)


def chain(cfg, total_steps=20):
    return optax.chain(optim.make_clip(cfg), optim.make_optimizer(cfg, total_steps))


@pytest.mark.parametrize("opt_index", range(len(OPTIMIZERS)))
def test_every_optimizer_schedule_clip_steps(opt_index):
    """Every optimizer with every schedule, and every clip, on a stacked tree. Covers all *pairs* of
    (optimizer, schedule, clip) with clip = (i + j) mod 4, in one compiled program per optimizer: the
    full 96-way product costs ~1 s of XLA compile each, and clip and schedule are independent links of
    the chain, so pairs catch what the product would."""
    opt = OPTIMIZERS[opt_index]
    params = {"embed": {"embedding": jnp.ones((7, 4))},
              "blocks": {"mlp": {"kernel": jnp.ones((L, 4, 5))}, "gate": jnp.full((L,), 0.5)}}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
    combos = [(s, CLIPS[(opt_index + j) % len(CLIPS)]) for j, s in enumerate(SCHEDULES)]

    @jax.jit
    def run_all(params, grads):
        out = {}
        for schedule, clip in combos:
            cfg = OptimConfig(optimizer=opt, schedule=schedule, clip=clip, warmup_steps=1,
                              skip_nonfinite=True)
            tx = chain(cfg)
            state = optim.init_state(tx, params, 1e-2, cfg.weight_decay)
            for _ in range(2):  # past the warmup, where every schedule's multiplier is > 0
                updates, state = tx.update(grads, state, params)
            out[schedule, clip] = optax.apply_updates(params, updates), optax.tree.norm(updates)
        return out

    for combo, (new, norm) in run_all(params, grads).items():
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new)), combo
        assert float(norm) > 0, combo


def test_init_state_under_vmap_over_seeds():
    cfg = OptimConfig(optimizer="adafactor", clip="agc")
    tx = chain(cfg)
    params_S = jax.tree.map(lambda x: jnp.stack([x, 0.5 - x]), tiny_params())
    grads_S = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tiny_grads())
    state_S = jax.jit(jax.vmap(lambda p: optim.init_state(tx, p, 3e-3, cfg.weight_decay)))(params_S)
    updates_S, _ = jax.jit(jax.vmap(tx.update))(grads_S, state_S, params_S)
    np.testing.assert_allclose(optim.peak_learning_rate(state_S), [3e-3, 3e-3])
    # Seed 1 on its own gives the same update as inside the vmap.
    p1, g1 = jax.tree.map(lambda x: x[1], params_S), jax.tree.map(lambda x: x[1], grads_S)
    u1, _ = jax.jit(tx.update)(g1, optim.init_state(tx, p1, 3e-3, cfg.weight_decay), p1)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], updates_S), u1, rtol=1e-5, atol=1e-7)


def test_global_norm_clip_matches_numpy():
    for c in (0.5, 1e3):
        cfg = OptimConfig(clip="global_norm", clip_value=c)
        grads = tiny_grads(scale=3.0)
        clipped, _ = optim.make_clip(cfg).update(grads, optax.EmptyState(), tiny_params())
        flat_g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
        flat_c = np.concatenate([np.ravel(x) for x in jax.tree.leaves(clipped)])
        g_norm = np.linalg.norm(flat_g)
        np.testing.assert_allclose(np.linalg.norm(flat_c), min(g_norm, c), rtol=1e-5)
        np.testing.assert_allclose(flat_c / np.linalg.norm(flat_c), flat_g / g_norm, rtol=1e-5, atol=1e-7)


def numpy_agc(g, p, lam, stacked, eps=1e-3):
    """Brock et al. 2021's unit-wise clip written independently: loop over layers and output units."""
    g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
    if stacked:
        return np.stack([numpy_agc(g[i], p[i], lam, False, eps) for i in range(g.shape[0])])
    out = np.empty_like(g)
    if g.ndim == 2:
        for j in range(g.shape[1]):  # unit j = column j, norm over the fan-in axis
            gn, pn = np.linalg.norm(g[:, j]), max(np.linalg.norm(p[:, j]), eps)
            out[:, j] = g[:, j] * min(1.0, lam * pn / gn)
        return out
    for idx in np.ndindex(g.shape):
        gn, pn = abs(g[idx]), max(abs(p[idx]), eps)
        out[idx] = g[idx] * min(1.0, lam * pn / gn) if gn > 0 else g[idx]
    return out


def test_agc_matches_numpy_and_keeps_layers_apart():
    lam = 0.05
    params, grads = tiny_params(), tiny_grads(scale=2.0)
    tx = optim.make_clip(OptimConfig(clip="agc", clip_value=lam))
    clip = jax.jit(tx.update)
    clipped, _ = clip(grads, tx.init(params), params)
    paths = jax.tree_util.tree_flatten_with_path(grads)[0]
    n_changed = 0
    for (path, g), p, c in zip(paths, jax.tree.leaves(params), jax.tree.leaves(clipped)):
        stacked = "blocks" in jax.tree_util.keystr(path)
        want = numpy_agc(g, p, lam, stacked)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
        n_changed += int(not np.allclose(c, g))
    assert n_changed >= 4  # λ small enough that clipping really acts

    # Scaling layer 0's kernel gradient must not change layers 1, 2 (and must change layer 0).
    k = grads["blocks"]["mlp"]["kernel"]
    grads2 = {**grads, "blocks": {**grads["blocks"], "mlp": {**grads["blocks"]["mlp"],
                                                            "kernel": k.at[0].multiply(100.0)}}}
    clipped2, _ = clip(grads2, tx.init(params), params)
    c1, c2 = clipped["blocks"]["mlp"]["kernel"], clipped2["blocks"]["mlp"]["kernel"]
    np.testing.assert_array_equal(c1[1:], c2[1:])
    np.testing.assert_allclose(c2[0], numpy_agc(100 * k[0], params["blocks"]["mlp"]["kernel"][0], lam, False),
                               rtol=1e-5, atol=1e-7)
    # optax's AGC (the trap) would have changed the other layers too.
    theirs = [optax.adaptive_grad_clip(lam).update(g, None, params)[0]["blocks"]["mlp"]["kernel"]
              for g in (grads, grads2)]
    assert not np.allclose(theirs[0][1:], theirs[1][1:])


def test_decay_mask_and_masked_leaf_is_not_decayed():
    params = tiny_params()
    mask = optim.decay_mask(params)
    assert mask["embed"]["embedding"] and mask["blocks"]["mlp"]["kernel"] and mask["head"]["kernel"]
    assert not any([mask["blocks"]["mlp"]["bias"], mask["blocks"]["norm"]["scale"],
                    mask["blocks"]["norm"]["bias"], mask["blocks"]["gate"]])
    zeros = jax.tree.map(jnp.zeros_like, params)
    for opt in ("adamw", "lion", "adafactor"):
        cfg = OptimConfig(optimizer=opt, schedule="constant", weight_decay=0.1)
        tx = optim.make_optimizer(cfg, 10)
        updates, _ = jax.jit(tx.update)(zeros, optim.init_state(tx, params, 0.1, cfg.weight_decay), params)
        new = optax.apply_updates(params, updates)
        for name in ("scale", "bias"):
            np.testing.assert_array_equal(new["blocks"]["norm"][name], params["blocks"]["norm"][name])
        np.testing.assert_array_equal(new["blocks"]["gate"], params["blocks"]["gate"])
        np.testing.assert_array_equal(new["blocks"]["mlp"]["bias"], params["blocks"]["mlp"]["bias"])
        # Decoupled decay coupled to the lr: θ ← θ·(1 − lr·wd) for a zero gradient.
        np.testing.assert_allclose(new["head"]["kernel"], params["head"]["kernel"] * (1 - 0.1 * 0.1),
                                   rtol=1e-5, err_msg=opt)


def test_mask_works_on_nnx_state():
    from flax import nnx
    _, state = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    mask = optim.decay_mask(state)
    assert sorted(jax.tree.leaves(mask)) == [False, True]  # bias, kernel
    assert jax.tree.structure(mask) == jax.tree.structure(state)


def test_changing_lr_does_not_retrace_and_scales_updates():
    cfg = OptimConfig(optimizer="sgd", b1=0.0, schedule="warmup_cosine", warmup_steps=4)
    tx = optim.make_optimizer(cfg, 10)
    params, grads = tiny_params(), tiny_grads()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state):
        return tx.update(grads, state, params)

    chex.clear_trace_counter()
    s1, s2 = optim.init_state(tx, params, 1e-3, cfg.weight_decay), optim.init_state(tx, params, 4e-3, cfg.weight_decay)
    for _ in range(3):
        u1, s1 = step(s1)
        u2, s2 = step(s2)
    m = float(optim.make_schedule(cfg, 10)(2))
    assert 0 < m < 1
    chex.assert_trees_all_close(u1, jax.tree.map(lambda g: -1e-3 * m * g, grads), rtol=1e-6)
    chex.assert_trees_all_close(u2, jax.tree.map(lambda g: -4e-3 * m * g, grads), rtol=1e-6)
    np.testing.assert_allclose(optim.learning_rate(s2, 2, cfg, 10), 4e-3 * m, rtol=1e-6)


@pytest.mark.parametrize("schedule,warmup,want", [
    ("constant", 4, {0: 1.0, 3: 1.0, 50: 1.0}),
    ("warmup_constant", 4, {0: 0.0, 1: 0.25, 3: 0.75, 4: 1.0, 90: 1.0}),
    ("warmup_constant", 0, {0: 1.0, 5: 1.0}),
    ("warmup_cosine", 4, {0: 0.0, 2: 0.5, 4: 1.0, 14: 0.5 * (1 + math.cos(math.pi * 10 / 36)),
                          22: 0.5, 40: 0.0, 60: 0.0}),
    ("inverse_sqrt", 4, {0: 0.0, 2: 0.5, 4: 1.0, 16: 0.5, 100: 0.2}),
])
def test_schedule_multiplier_hand_values(schedule, warmup, want):
    m = optim.make_schedule(OptimConfig(schedule=schedule, warmup_steps=warmup), total_steps=40)
    for step, value in want.items():
        np.testing.assert_allclose(float(m(step)), value, atol=1e-6, err_msg=f"step {step}")


@pytest.mark.parametrize("schedule,reference", [
    ("warmup_cosine", lambda lr: optax.warmup_cosine_decay_schedule(0.0, lr, 3, 8, end_value=0.0)),
    ("warmup_constant", lambda lr: optax.join_schedules(
        [optax.linear_schedule(0.0, lr, 3), optax.constant_schedule(lr)], [3])),
])
def test_adamw_equals_optax_scheduled_adamw(schedule, reference):
    lr, wd = 3e-2, 0.1
    cfg = OptimConfig(optimizer="adamw", schedule=schedule, warmup_steps=3, weight_decay=wd)
    ours = optim.make_optimizer(cfg, total_steps=8)
    theirs = optax.adamw(reference(lr), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                         mask=optim.decay_mask)
    p_ours = p_theirs = tiny_params()
    s_ours, s_theirs = optim.init_state(ours, p_ours, lr, wd), theirs.init(p_theirs)
    for i in range(6):
        g = tiny_grads(scale=1.0 + i)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(g, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
    assert not np.allclose(p_ours["head"]["kernel"], tiny_params()["head"]["kernel"])
    chex.assert_trees_all_close(p_ours, p_theirs, rtol=1e-5, atol=1e-6)


def test_apply_if_finite_skips_nan_then_updates():
    cfg = OptimConfig(optimizer="adam", schedule="constant", clip="global_norm", skip_nonfinite=True)
    tx = chain(cfg)
    params = tiny_params()
    state = optim.init_state(tx, params, 1e-2, cfg.weight_decay)
    bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), tiny_grads())
    updates, state = tx.update(bad, state, params)
    after_bad = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(after_bad, params)
    updates, state = tx.update(tiny_grads(), state, after_bad)
    after_good = optax.apply_updates(after_bad, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after_good))
    assert not np.allclose(after_good["head"]["kernel"], params["head"]["kernel"])
    assert int(optax.tree_utils.tree_get(state, "total_notfinite")) == 1


def test_adafactor_treats_each_layer_as_its_own_tensor():
    """Adafactor's factored moments and block RMS are per layer, as for an unstacked model."""
    cfg = OptimConfig(optimizer="adafactor", schedule="constant", weight_decay=0.0)
    params, grads = tiny_params(), tiny_grads()
    tx = optim.make_optimizer(cfg, 10)
    updates, _ = tx.update(grads, optim.init_state(tx, params, 0.1, cfg.weight_decay), params)
    ref = optax.adafactor(0.1)
    for i in range(L):
        p_i, g_i = params["blocks"]["mlp"]["kernel"][i], grads["blocks"]["mlp"]["kernel"][i]
        u_i, _ = ref.update(g_i, ref.init(p_i), p_i)
        np.testing.assert_allclose(updates["blocks"]["mlp"]["kernel"][i], u_i, rtol=1e-5, atol=1e-8)


def hand_schedule(kind, w, total_steps):
    """The multiplier written out by hand (the formulas in make_schedule's docstring), for comparison."""
    def multiplier(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = jnp.minimum(step / w, 1.0) if w > 0 else jnp.ones_like(step)
        if kind == "constant":
            return jnp.ones_like(step)
        if kind == "warmup_constant":
            return warmup
        if kind == "warmup_cosine":
            progress = jnp.clip((step - w) / max(total_steps - w, 1), 0.0, 1.0)
            return jnp.where(step < w, warmup, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        if kind == "inverse_sqrt":
            return jnp.where(step < w, warmup, jnp.sqrt(max(w, 1) / jnp.maximum(step, 1.0)))
        raise AssertionError(kind)
    return multiplier


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("warmup,total", [(0, 40), (1, 40), (4, 40), (7, 40), (39, 40), (40, 40), (50, 40), (0, 1)])
def test_schedule_equals_hand_formula_at_every_step(schedule, warmup, total):
    """Every step from 0 to past the end (warmup end, decay end, total ≤ warmup, no warmup), as an array of
    steps and as single Python ints (the logging path)."""
    steps = np.arange(0, total + warmup + 10)
    ours = optim.make_schedule(OptimConfig(schedule=schedule, warmup_steps=warmup), total_steps=total)
    want = np.asarray(hand_schedule(schedule, warmup, total)(steps))
    got = np.asarray(ours(jnp.asarray(steps, jnp.int32)))
    assert got.dtype == np.float32 and got.shape == steps.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)
    assert np.all((got >= 0) & (got <= 1)) and got.max() == 1.0
    for s in (0, warmup, total, total + 1):
        np.testing.assert_allclose(float(ours(s)), float(hand_schedule(schedule, warmup, total)(s)), atol=2e-7)


def hand_agc(grads, params, lam, eps=optim.AGC_EPS):
    """Unit-wise AGC written out in jnp: fan-in columns of matrices (never across the layer axis of a
    stacked leaf), single entries of vectors and scalars."""
    def leaf(path, g, p):
        stacked = "blocks" in jax.tree_util.keystr(path)

        def unit_norm(x):
            if x.ndim - int(stacked) >= 2:
                return jnp.sqrt(jnp.sum(jnp.square(x), axis=-2, keepdims=True))
            return jnp.abs(x)
        max_norm, g_norm = lam * jnp.maximum(unit_norm(p), eps), unit_norm(g)
        return jnp.where(g_norm > max_norm, g * (max_norm / jnp.maximum(g_norm, 1e-6)), g)
    return jax.tree_util.tree_map_with_path(leaf, grads, params)


@pytest.mark.parametrize("lam", [0.05, 0.5, float("inf")])
def test_agc_equals_hand_formula_with_zero_weights(lam):
    """Stacked and unstacked leaves, with some weights all zero (the ε floor decides their clip) and some
    gradients zero; an infinite threshold (a run without clipping packed with clipped ones) is the identity."""
    params, grads = tiny_params(), tiny_grads(scale=2.0)
    params["blocks"]["norm"]["bias"] = jnp.zeros((L, 4))                     # zero-initialised, stacked
    params["head"]["kernel"] = params["head"]["kernel"].at[:, 2].set(0.0)    # one zero unit, unstacked
    params["blocks"]["mlp"]["kernel"] = params["blocks"]["mlp"]["kernel"].at[1].set(0.0)  # one zero layer
    grads["blocks"]["gate"] = grads["blocks"]["gate"].at[0].set(0.0)
    tx = optim.adaptive_grad_clip(lam)
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    want = hand_agc(grads, params, lam)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-9)
    if np.isinf(lam):
        chex.assert_trees_all_equal(got, grads)
    else:  # the ε floor acts: a zero layer's gradient is clipped to norm λ·ε per unit
        col_norms = np.linalg.norm(np.asarray(got["blocks"]["mlp"]["kernel"][1]), axis=0)
        np.testing.assert_allclose(col_norms, lam * optim.AGC_EPS, rtol=1e-5)


def test_rmsprop_is_bias_corrected_by_hand():
    # numpy, step by step: ν ← b2·ν + (1 − b2)·g², ν̂ = ν/(1 − b2^t), update = −lr·g/√(ν̂ + eps). At step 1 every
    # coordinate moves by lr (|g|/√g²), as AdamW's does; uncorrected it would move by lr/√(1 − b2) ≈ 32·lr.
    lr = 1e-2
    cfg = OptimConfig(optimizer="rmsprop", schedule="constant")
    tx = optim.make_optimizer(cfg, total_steps=10)
    params = tiny_params()
    state = optim.init_state(tx, params, lr, cfg.weight_decay)
    nu = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    for t in range(1, 4):
        g = tiny_grads(scale=float(t))
        u, state = tx.update(g, state, params)
        nu = jax.tree.map(lambda n, gg: cfg.b2 * n + (1 - cfg.b2) * np.asarray(gg, np.float64) ** 2, nu, g)
        want = jax.tree.map(lambda n, gg: -lr * np.asarray(gg, np.float64) / np.sqrt(n / (1 - cfg.b2 ** t) + cfg.eps),
                            nu, g)
        chex.assert_trees_all_close(jax.tree.map(np.asarray, u), want, rtol=1e-4, atol=1e-9)
        if t == 1:
            assert np.allclose(np.abs(np.asarray(u["head"]["kernel"])), lr, rtol=1e-3)
