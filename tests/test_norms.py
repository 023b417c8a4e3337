"""Each norm against an independent numpy reimplementation of its paper's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm.config import NORMS, ModelConfig
from jaxnorm.norms import make_norm

B, T, D, G = 3, 5, 8, 2
EPS = 1e-5
CFG = ModelConfig(d_model=D, num_heads=2, num_groups=G, norm_eps=EPS)


def _x(seed=0, shift=0.0):
    # Non-zero mean and non-unit scale so centring and scaling both matter.
    return 1.7 * jax.random.normal(jax.random.key(seed), (B, T, D)) + shift


def _randomise_params(module, seed=1):
    """Give every Param a random non-trivial value (scale away from 1, bias away from 0)."""
    params = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    new = [1.0 + 0.5 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)]
    nnx.update(module, jax.tree_util.tree_unflatten(treedef, new))
    return {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(module, nnx.Param)).items()}


def _std(x, axis):
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS)


def _reference(kind, x, p):
    x = np.asarray(x, np.float64)
    if kind == "layernorm":
        return _std(x, -1) * p["scale"] + p["bias"]
    if kind == "rmsnorm":
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * p["scale"]
    if kind == "scalenorm":
        return p["scale"] * x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)
    if kind == "groupnorm":
        xg = x.reshape(B, T, G, D // G)
        return _std(xg, -1).reshape(B, T, D) * p["scale"] + p["bias"]
    if kind == "instancenorm":
        return _std(x, 1) * p["scale"] + p["bias"]
    if kind == "batchnorm":
        return _std(x, (0, 1)) * p["scale"] + p["bias"]
    if kind == "none":
        return x
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", NORMS)
def test_norm_matches_reference_formula(kind):
    m = make_norm(kind, D, CFG, rngs=nnx.Rngs(0))
    p = _randomise_params(m)
    x = _x(shift=0.6)
    y = m(x, train=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(y), _reference(kind, x, p), rtol=1e-4, atol=1e-5)
    if kind != "none":
        assert not np.allclose(np.asarray(y), np.asarray(x), atol=1e-2)  # it actually did something


def test_default_params():
    ln = make_norm("layernorm", D, CFG, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ln.scale[...], np.ones(D))
    np.testing.assert_array_equal(ln.bias[...], np.zeros(D))
    sn = make_norm("scalenorm", D, CFG, rngs=nnx.Rngs(0))
    assert sn.scale[...].shape == ()
    np.testing.assert_allclose(sn.scale[...], np.sqrt(D))
    assert not hasattr(make_norm("rmsnorm", D, CFG, rngs=nnx.Rngs(0)), "bias")
    assert nnx.state(make_norm("none", D, CFG, rngs=nnx.Rngs(0))) == nnx.State({})


def test_batchnorm_running_stats_train_then_eval():
    m = make_norm("batchnorm", D, CFG, rngs=nnx.Rngs(0))
    p = _randomise_params(m)
    np.testing.assert_array_equal(m.mean[...], np.zeros(D))
    np.testing.assert_array_equal(m.var[...], np.ones(D))
    run_mean, run_var = np.zeros(D), np.ones(D)
    for seed, shift in ((0, 0.8), (1, -0.3)):
        x = np.asarray(_x(seed, shift), np.float64)
        y = m(jnp.asarray(x, jnp.float32), train=True)
        np.testing.assert_allclose(np.asarray(y), _reference("batchnorm", x, p), rtol=1e-4, atol=1e-5)
        batch_mean, batch_var = x.mean((0, 1)), x.var((0, 1))  # biased variance, as documented
        run_mean = 0.9 * run_mean + 0.1 * batch_mean
        run_var = 0.9 * run_var + 0.1 * batch_var
        np.testing.assert_allclose(m.mean[...], run_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.var[...], run_var, rtol=1e-5, atol=1e-6)
    # eval: running statistics are used and stay unchanged.
    x = np.asarray(_x(2, 1.5), np.float64)
    y = m(jnp.asarray(x, jnp.float32), train=False)
    expected = (x - run_mean) / np.sqrt(run_var + EPS) * p["scale"] + p["bias"]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.mean[...], run_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.var[...], run_var, rtol=1e-5, atol=1e-6)


def test_batchnorm_gradient_flows_through_batch_statistics():
    m = make_norm("batchnorm", D, CFG, rngs=nnx.Rngs(0))
    p = _randomise_params(m)
    graphdef, state = nnx.split(m)
    c = jax.random.normal(jax.random.key(7), (B, T, D))

    def loss(x, state):  # copy: a variable mutated under grad must be created inside that trace
        return jnp.sum(nnx.merge(graphdef, state, copy=True)(x, train=True) * c)

    def ref_loss(x):  # batch stats as functions of x, in plain jnp
        mean = x.mean((0, 1))
        var = ((x - mean) ** 2).mean((0, 1))
        return jnp.sum(((x - mean) / jnp.sqrt(var + EPS) * p["scale"] + p["bias"]) * c)

    x = _x(3, 0.5)
    g, g_ref = jax.grad(loss)(x, state), jax.grad(ref_loss)(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-5)
    # Treating the statistics as constants would give a different gradient: the test can tell them apart.
    g_const = c * p["scale"] / np.sqrt(np.asarray(x).var((0, 1)) + EPS)
    assert not np.allclose(g, g_const, atol=1e-3)


def test_batchnorm_functional_split_merge_under_jit_updates_state():
    m = make_norm("batchnorm", D, CFG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    @jax.jit
    def step(params, rest, x):
        mod = nnx.merge(graphdef, params, rest)
        y = mod(x, train=True)
        return y, nnx.state(mod, nnx.BatchStat)

    x = _x(4, 2.0)
    _, new_rest = step(params, rest, x)
    np.testing.assert_allclose(new_rest["mean"][...], 0.1 * np.asarray(x).mean((0, 1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", NORMS)
def test_finite_forward_backward_and_dtype(kind):
    m = make_norm(kind, D, CFG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(params, x, rest):
        return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, train=True) ** 3)

    x = _x(5, 0.3)
    val, (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1))(params, x, rest)
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(l)) for l in jax.tree_util.tree_leaves((gp, gx)))
    y16 = m(x.astype(jnp.bfloat16), train=True)
    assert y16.dtype == jnp.bfloat16 and y16.shape == x.shape


@pytest.mark.parametrize("kind", NORMS)
def test_stacked_creation(kind):
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return make_norm(kind, D, CFG, rngs=rngs)

    stacked = create(nnx.Rngs(0))
    leaves = jax.tree_util.tree_leaves(nnx.state(stacked))
    assert (len(leaves) == 0) == (kind == "none")
    assert all(l.shape[0] == 3 for l in leaves)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match=r"'weightnorm'.*layernorm.*batchnorm"):
        make_norm("weightnorm", D, CFG, rngs=nnx.Rngs(0))
