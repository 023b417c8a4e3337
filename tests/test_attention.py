"""Every attention form against a float64 numpy reference built from the module's own kernels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm.attention import Attention, PowerIterState
from jaxnorm.config import ATTENTIONS, ModelConfig

B, T, D, H = 2, 5, 16, 4
K = D // H


def _cfg(form, causal=False, **kw):
    return ModelConfig(d_model=D, num_heads=H, attention=form, causal=causal, **kw)


def _x(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, T, D))


def _randomise(m, seed=1):
    """Random, non-trivial values for every Param (biases non-zero, gains away from 1)."""
    state = nnx.state(m, nnx.Param)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    keys = jax.random.split(jax.random.key(seed), len(paths_leaves))
    new = []
    for (path, leaf), k in zip(paths_leaves, keys):
        name = "/".join(str(p.key) for p in path if hasattr(p, "key"))  # drop the Variable .value hop
        noise = jax.random.normal(k, leaf.shape)
        if name.endswith("kernel"):
            new.append(0.25 * noise)
        elif name == "logit_scale":  # head 0 above the clamp log(100) ≈ 4.6, so the clamp is exercised
            new.append((math.log(10.0) + 0.5 * noise).at[0].set(5.5))
        elif name.endswith("bias"):
            new.append(0.3 * noise)
        else:  # scale, gamma_*
            new.append(1.0 + 0.3 * noise)
    nnx.update(m, jax.tree_util.tree_unflatten(treedef, new))


def _params(m):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(m, nnx.Param)))


def _reference(m, x, form, causal, eps=1e-5):
    """Independent float64 numpy attention: returns (y, logits, entropy_H, logit_max_H)."""
    p, x = _params(m), np.asarray(x, np.float64)

    def lin(name, a):
        w = p[name]["kernel"]
        if form == "sigma_reparam":
            w = p[f"gamma_{name}"] / np.linalg.norm(w, ord=2) * w
        return a @ w + p[name]["bias"]

    def heads(a):
        return a.reshape(B, T, H, K).transpose(0, 2, 1, 3)

    def ln(a, q):
        mu = a.mean(-1, keepdims=True)
        return (a - mu) / np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + eps) * q["scale"] + q["bias"]

    q = heads(lin("query", x))
    k = q if form == "l2" else heads(lin("key", x))
    v = heads(lin("value", x))
    if form in ("dot", "sigma_reparam"):
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(K)
    elif form == "dot_unscaled":
        logits = q @ k.transpose(0, 1, 3, 2)
    elif form == "qk_norm":
        logits = ln(q, p["q_norm"]) @ ln(k, p["k_norm"]).transpose(0, 1, 3, 2) / np.sqrt(K)
    elif form == "cosine":
        qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
        kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
        inv_tau = np.exp(np.minimum(p["logit_scale"], np.log(100.0)))
        logits = qn @ kn.transpose(0, 1, 3, 2) * inv_tau[:, None, None]
    elif form == "l2":
        logits = -np.sum((q[:, :, :, None, :] - k[:, :, None, :, :]) ** 2, -1) / np.sqrt(K)
    mask = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    masked = np.where(mask, logits, -np.inf)
    e = np.exp(masked - masked.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    plogp = np.where(mask, probs * np.log(np.where(mask, probs, 1.0)), 0.0)
    entropy = -plogp.sum(-1).mean(axis=(0, 2))
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    return lin("out", ctx), logits, entropy, masked.max(axis=(0, 2, 3))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", ATTENTIONS)
def test_matches_reference(form, causal):
    # Many power iterations per train call so σ has converged for the randomised kernels.
    m = Attention(_cfg(form, causal, sigma_reparam_iters=30), rngs=nnx.Rngs(0))
    _randomise(m)
    x = _x()
    if form == "sigma_reparam":  # let power iteration converge on the randomised kernels
        for _ in range(3):
            m(x, train=True)
    y, diag = m(x, train=False)
    y_ref, logits_ref, ent_ref, max_ref = _reference(m, x, form, causal)
    tol = 1e-2 if form == "sigma_reparam" else 1e-4  # σ: power iteration vs exact SVD
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=tol, atol=tol)
    q, k, _ = m.project(x, train=False)
    np.testing.assert_allclose(np.asarray(m.scores(q, k)), logits_ref, rtol=tol, atol=tol)
    assert diag["attn_entropy"].shape == (H,) and diag["attn_entropy"].dtype == jnp.float32
    assert diag["attn_logit_max"].shape == (H,) and diag["attn_logit_max"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(diag["attn_entropy"]), ent_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(diag["attn_logit_max"]), max_ref, rtol=tol, atol=tol)
    # Attention is neither uniform nor one-hot with these weights, so the entropy check has teeth.
    assert np.any(ent_ref > 0.05) and np.any(ent_ref < math.log(T) - 0.05)


def test_scaling_is_exactly_one_over_sqrt_dk():
    x = _x(1)
    dot = Attention(_cfg("dot"), rngs=nnx.Rngs(0))
    unscaled = Attention(_cfg("dot_unscaled"), rngs=nnx.Rngs(1))
    _randomise(dot)
    nnx.update(unscaled, nnx.state(dot, nnx.Param))
    l_dot = dot.scores(*dot.project(x, train=False)[:2])
    l_un = unscaled.scores(*unscaled.project(x, train=False)[:2])
    np.testing.assert_allclose(np.asarray(l_dot) * math.sqrt(K), np.asarray(l_un), rtol=1e-5, atol=1e-5)
    assert not np.allclose(l_dot, l_un, atol=1e-2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", ATTENTIONS)
def test_uniform_attention_entropy(form, causal):
    m = Attention(_cfg(form, causal), rngs=nnx.Rngs(0))
    m.query.kernel[...] = jnp.zeros((D, D))  # q = 0 (and k = 0 for l2) -> every visible key equally likely
    _, diag = m(_x(2), train=False)
    expected = np.mean(np.log(np.arange(1, T + 1))) if causal else math.log(T)
    np.testing.assert_allclose(np.asarray(diag["attn_entropy"]), np.full(H, expected), rtol=1e-5)


@pytest.mark.parametrize("form", ATTENTIONS)
def test_causal_mask_blocks_the_future(form):
    m = Attention(_cfg(form, causal=True), rngs=nnx.Rngs(0))
    _randomise(m)
    m.refresh_sigma()
    graphdef, state = nnx.split(m)

    def f(x):
        return nnx.merge(graphdef, state, copy=True)(x, train=False)[0]

    J = np.asarray(jax.jacfwd(f)(_x(3)))  # [B, T, D, B, T, D]
    J_TxT = np.abs(J[0, :, :, 0, :, :]).sum(axis=(1, 3))  # |∂y_t/∂x_s| summed over channels
    assert np.all(J_TxT[np.triu_indices(T, 1)] == 0.0)
    assert np.all(J_TxT[np.tril_indices(T, -1)] > 1e-6)  # the past does matter


@pytest.mark.parametrize("t", [1, 2, 7])
def test_causal_mask_equals_lower_triangle(t):
    from jaxnorm.attention import causal_mask
    mask = np.asarray(causal_mask(t))
    assert mask.dtype == np.bool_ and mask.shape == (t, t)
    np.testing.assert_array_equal(mask, np.tril(np.ones((t, t), bool)))


def test_l2_is_tied_and_non_positive():
    m = Attention(_cfg("l2"), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    assert "key" not in params and set(params) == {"query", "value", "out"}
    _randomise(m)
    logits = np.asarray(m.scores(*m.project(_x(4), train=False)[:2]))
    assert np.all(logits <= 0.0)
    np.testing.assert_allclose(np.diagonal(logits, axis1=-2, axis2=-1), 0.0, atol=1e-4)
    assert logits.min() < -1.0


def test_sigma_reparam_power_iteration_state():
    m = Attention(_cfg("sigma_reparam"), rngs=nnx.Rngs(0))
    assert len(nnx.state(m, PowerIterState)) == 8
    assert not any(k.startswith("sigma_") for k in nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    for name in ("query", "key", "value", "out"):  # accurate at init
        w = np.asarray(getattr(m, name).kernel[...])
        sigma = np.asarray(getattr(m, f"sigma_u_{name}")[...]) @ w @ np.asarray(getattr(m, f"sigma_v_{name}")[...])
        np.testing.assert_allclose(sigma, np.linalg.norm(w, ord=2), rtol=1e-2)
        np.testing.assert_allclose(np.asarray(getattr(m, f"gamma_{name}")[...]), 1.0)
    _randomise(m)  # stale vectors: eval keeps them, train moves them
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, PowerIterState)))
    m(_x(5), train=False)
    after_eval = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, PowerIterState)))
    jax.tree.map(np.testing.assert_array_equal, before, after_eval)
    m(_x(5), train=True)
    after_train = nnx.to_pure_dict(nnx.state(m, PowerIterState))
    assert not np.allclose(before["sigma_u_query"], after_train["sigma_u_query"])


@pytest.mark.parametrize("form", ATTENTIONS)
def test_finite_forward_backward_at_init(form):
    m = Attention(_cfg(form, causal=True), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(params, rest, x):
        y, diag = nnx.merge(graphdef, params, rest, copy=True)(x, train=True)
        return jnp.sum(y ** 2) + jnp.sum(diag["attn_entropy"]) + jnp.sum(diag["attn_logit_max"])

    val, grads = jax.jit(jax.value_and_grad(loss))(params, rest, _x(6))
    leaves = jax.tree_util.tree_leaves(grads)
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["out"]))


def test_bfloat16_compute_matches_float32():
    x = _x(7)
    m32 = Attention(_cfg("dot"), rngs=nnx.Rngs(0))
    m16 = Attention(_cfg("dot", dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert m16.query.kernel[...].dtype == jnp.float32
    y32, _ = m32(x, train=False)
    y16, d16 = m16(x, train=False)
    assert y16.dtype == jnp.bfloat16 and d16["attn_entropy"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("form", ATTENTIONS)
def test_stacked_creation_and_scan(form):
    cfg = _cfg(form, causal=True)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return Attention(cfg, rngs=rngs)

    stacked = create(nnx.Rngs(0))
    assert all(l.shape[0] == 3 for l in jax.tree_util.tree_leaves(nnx.state(stacked)))
    kernels = np.asarray(stacked.query.kernel[...])
    assert kernels.shape == (3, D, D) and not np.allclose(kernels[0], kernels[1])

    graphdef, params, rest = nnx.split(stacked, nnx.Param, ...)

    @jax.jit
    def forward(params, rest, x):
        def layer(x, state):
            block = nnx.merge(graphdef, *state)
            y, diag = block(x, train=True)
            return x + y, (diag, nnx.state(block, nnx.Not(nnx.Param)))
        return jax.lax.scan(layer, x, (params, rest))

    x, (diag, new_rest) = forward(params, rest, _x(8))
    assert np.all(np.isfinite(x)) and diag["attn_entropy"].shape == (3, H)
    assert jax.tree.map(jnp.shape, new_rest) == jax.tree.map(jnp.shape, rest)
    if form == "sigma_reparam":  # refresh_sigma re-estimates σ per layer after kernels are redrawn
        gains_L = jnp.array([0.1, 1.0, 3.0])[:, None, None]
        stacked.value.kernel[...] = gains_L * jax.random.normal(jax.random.key(9), (3, D, D))
        stacked.refresh_sigma()
        for l in range(3):
            w = np.asarray(stacked.value.kernel[...][l])
            u, v = np.asarray(stacked.sigma_u_value[...][l]), np.asarray(stacked.sigma_v_value[...][l])
            np.testing.assert_allclose(u @ w @ v, np.linalg.norm(w, ord=2), rtol=1e-2)
