"""The research API, checked with public names only: the recorded Jacobian norms against the exact largest
singular value of the dense Jacobian of `jaxnorm.block_map` / `stack_map` at `jaxnorm.stream` of the probe batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm
from jaxnorm.model import graphdef_of

# Mix-LN at depth 4 makes layer 0 Post-LN and the others Pre-LN: a map given the wrong layer index differs.
MODEL = jaxnorm.ModelConfig(depth=4, d_model=8, num_heads=2, d_ff=16, block="mix_ln")
TRAIN = jaxnorm.TrainConfig(task="reverse", steps=0, seeds=2, batch_size=4, seq_len=8, progress=False)
PROBE = jaxnorm.ProbeConfig(probe_batch=2, power_iters=40, hutchinson_samples=1)


@pytest.fixture(scope="session")
def trained():
    return jaxnorm.train(MODEL, jaxnorm.OptimConfig(), TRAIN, PROBE)


def _seed_model(h, s):
    """(model_cfg, params, rest) of seed s, rebuilt from the History with public names."""
    seed = jax.tree.map(lambda a: jnp.asarray(a[s]), (h.params, h.rest))
    return (jaxnorm.resolve_config(MODEL, TRAIN), *seed)


def _sigma_max(fn, x):
    """The exact largest singular value of fn's Jacobian at x, over the whole batch: a [B·T·D, B·T·D] matrix."""
    dense = jax.jacfwd(lambda v: fn(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))
    return np.linalg.svd(np.asarray(dense, np.float64), compute_uv=False)[0]


def test_recorded_spectral_norms_equal_the_dense_jacobians(trained):
    tokens = jaxnorm.probe_tokens(TRAIN, PROBE)
    assert tokens.shape == (PROBE.probe_batch, TRAIN.seq_len)
    assert list(trained.jacobian_steps) == [0]
    for s in range(TRAIN.seeds):
        model = _seed_model(trained, s)
        xs = jaxnorm.stream(model, tokens)
        assert xs.shape == (MODEL.depth + 1, PROBE.probe_batch, TRAIN.seq_len, MODEL.d_model)
        for layer in range(MODEL.depth):
            exact = _sigma_max(jaxnorm.block_map(model, layer), xs[layer])
            np.testing.assert_allclose(trained.jacobian["jac_spectral"][0, s, layer], exact, rtol=1e-3,
                                       err_msg=f"seed {s} layer {layer}")
        exact = _sigma_max(jaxnorm.stack_map(model), xs[0])
        np.testing.assert_allclose(trained.jacobian["jac_end_to_end"][0, s], exact, rtol=1e-3)


def test_maps_compose_into_the_model(trained):
    cfg, params, rest = _seed_model(trained, 0)
    tokens = jaxnorm.probe_tokens(TRAIN, PROBE)
    xs = jaxnorm.stream((cfg, params, rest), tokens)
    net = nnx.merge(graphdef_of(cfg), params, rest)  # the nnx Model form works too
    np.testing.assert_allclose(jaxnorm.stack_map(net)(xs[0]), xs[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jaxnorm.stack_map(net, 1, 3)(xs[1]), xs[3], rtol=1e-5, atol=1e-6)
    for layer in range(cfg.depth):
        np.testing.assert_allclose(jaxnorm.block_map(net, layer)(xs[layer]), xs[layer + 1], rtol=1e-5, atol=1e-6)
    logits = jaxnorm.apply(graphdef_of(cfg), params, rest, tokens, train=False)[0]
    np.testing.assert_allclose(net.unembed(xs[-1], train=False), logits, rtol=1e-5, atol=1e-6)
    primal, jvp = jax.linearize(jaxnorm.block_map(net, 0), xs[0])  # jax.linearize takes the map as it is
    np.testing.assert_allclose(primal, xs[1], rtol=1e-5, atol=1e-6)
    assert jvp(jnp.ones_like(xs[0])).shape == xs[0].shape
    with pytest.raises(ValueError, match=r"layer: invalid value 4; allowed: an integer >= 0 and <= 3"):
        jaxnorm.block_map(net, cfg.depth)
    with pytest.raises(TypeError, match="allowed: a jaxnorm.Model"):
        jaxnorm.stream(params, tokens)


def test_seed_keys_give_the_runs_initial_parameters(trained):
    cfg = jaxnorm.resolve_config(MODEL, TRAIN)
    for s in range(TRAIN.seeds):  # steps = 0: the final parameters are the initial ones
        _, params, _ = jaxnorm.init(cfg, jaxnorm.seed_keys(TRAIN.seed + s)[0])
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(trained.params)):
            np.testing.assert_allclose(got, want[s], rtol=1e-6, atol=1e-7)
