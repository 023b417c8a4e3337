"""Model-level invariants: scan == loop, causality through gradients, every variant combination trains."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm import model as model_lib
from jaxnorm.config import ATTENTIONS, BLOCKS, NORM_FREE_BLOCKS, NORMS, SEQUENCE_MIXING_NORMS, ModelConfig
from jaxnorm.init_schemes import admin_omega_profiled

TINY = dict(d_model=8, num_heads=2, d_ff=16, vocab_size=7, max_len=6)


def tokens(B=2, T=6, key=0):
    return jax.random.randint(jax.random.key(key), (B, T), 0, TINY["vocab_size"])


def loss_of(cfg, params, rest, toks, graphdef):
    logits, _, _ = model_lib.apply(graphdef, params, rest, toks, train=True)
    return jnp.mean(jnp.square(logits))


@pytest.mark.parametrize("block,norm,attention", [("post_ln", "layernorm", "dot"), ("pre_ln", "batchnorm", "sigma_reparam"),
                                                  ("admin", "rmsnorm", "cosine")])
def test_scan_equals_loop(block, norm, attention):
    cfg = ModelConfig(depth=4, block=block, norm=norm, attention=attention, **TINY)
    gd, params, rest = model_lib.init(cfg, jax.random.key(0))
    gd_loop = model_lib.graphdef_of(cfg.replace(scan=False))
    toks = tokens()
    out_scan = model_lib.apply(gd, params, rest, toks, train=True)
    out_loop = model_lib.apply(gd_loop, params, rest, toks, train=True)
    chex.assert_trees_all_close(out_scan, out_loop, rtol=1e-5, atol=1e-5)
    g_scan = jax.grad(loss_of, argnums=1)(cfg, params, rest, toks, gd)
    g_loop = jax.grad(loss_of, argnums=1)(cfg, params, rest, toks, gd_loop)
    chex.assert_trees_all_close(g_scan, g_loop, rtol=1e-4, atol=1e-6)


def test_remat_changes_nothing():
    cfg = ModelConfig(depth=3, **TINY)
    gd, params, rest = model_lib.init(cfg, jax.random.key(0))
    gd_remat = model_lib.graphdef_of(cfg.replace(remat=True))
    g = jax.grad(loss_of, argnums=1)(cfg, params, rest, tokens(), gd)
    g_remat = jax.grad(loss_of, argnums=1)(cfg, params, rest, tokens(), gd_remat)
    chex.assert_trees_all_close(g, g_remat, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("block", ["post_ln", "pre_ln"])
def test_causality_through_gradients(block, attention):
    """With causal=True, ∂logits_t/∂embedding_s is zero for s > t and non-zero for s <= t."""
    cfg = ModelConfig(depth=2, block=block, attention=attention, causal=True, **TINY)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    toks = tokens(B=1)
    x0 = model.embed(toks)

    def logits_from_embedding(x):
        y, _ = model.encoder(x, train=False)
        return model.unembed(y, train=False)[0].sum(-1)  # [T]

    jac_TxTxD = jax.jacrev(logits_from_embedding)(x0)[:, 0]  # d logits_t / d x_s
    influence_TxT = np.asarray(jnp.abs(jac_TxTxD).sum(-1))
    T = influence_TxT.shape[0]
    future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(influence_TxT[future] == 0.0)
    assert np.all(influence_TxT[~future] > 0.0)


def test_bidirectional_sees_the_future():
    cfg = ModelConfig(depth=2, causal=False, **TINY)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    x0 = model.embed(tokens(B=1))
    jac = jax.jacrev(lambda x: model.unembed(model.encoder(x, train=False)[0], train=False)[0, 0].sum())(x0)
    assert float(jnp.abs(jac[0, -1]).sum()) > 0.0


def _full_product():
    for block, norm, attention in itertools.product(BLOCKS, NORMS, ATTENTIONS):
        if block in NORM_FREE_BLOCKS and norm != "layernorm":
            continue  # norm-free blocks ignore `norm`: one combination each is enough
        yield block, norm, attention


def _all_pairs():
    """A covering design: every (block, norm), (block, attention) and (norm, attention) pair at least once.

    Block b's combinations pair norm j with attention (j + b) mod |attentions|: with at least as many norms
    as attention forms, each block meets every norm and every attention form, and shifting by b pairs each
    norm with every attention form across blocks. Norm-free blocks ignore `norm` and meet each attention form
    once. 82 of the full product's 432 combinations; the full product runs with `pytest -m slow`."""
    assert len(NORMS) >= len(ATTENTIONS)
    combos = []
    for b, block in enumerate(BLOCKS):
        if block in NORM_FREE_BLOCKS:
            combos += [(block, "layernorm", attention) for attention in ATTENTIONS]
        else:
            combos += [(block, norm, ATTENTIONS[(j + b) % len(ATTENTIONS)]) for j, norm in enumerate(NORMS)]
    return combos


def test_the_covering_design_covers_every_pair():
    combos, normed = _all_pairs(), [b for b in BLOCKS if b not in NORM_FREE_BLOCKS]
    assert set(combos) <= set(_full_product())
    assert {(b, n) for b, n, _ in combos} >= set(itertools.product(normed, NORMS))
    assert {(b, a) for b, _, a in combos} == set(itertools.product(BLOCKS, ATTENTIONS))
    assert {(n, a) for b, n, a in combos if b in normed} == set(itertools.product(NORMS, ATTENTIONS))


def _finite_forward_backward(block, norm, attention):
    cfg = ModelConfig(depth=2, block=block, norm=norm, attention=attention, **TINY)
    gd, params, rest = model_lib.init(cfg, jax.random.key(0))
    with jax.disable_jit():  # hundreds of distinct tiny programs: eager is faster than compiling each
        loss, grads = jax.value_and_grad(loss_of, argnums=1)(cfg, params, rest, tokens(), gd)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("block,norm,attention", _all_pairs())
def test_every_pair_of_variants_is_finite(block, norm, attention):
    _finite_forward_backward(block, norm, attention)


@pytest.mark.slow
@pytest.mark.parametrize("block,norm,attention", list(_full_product()))
def test_every_combination_is_finite(block, norm, attention):
    _finite_forward_backward(block, norm, attention)


def test_stacked_parameters_have_layer_axis():
    cfg = ModelConfig(depth=5, **TINY)
    _, params, _ = model_lib.init(cfg, jax.random.key(0))
    blocks = params["encoder"]["blocks"]
    for leaf in jax.tree.leaves(blocks):
        assert leaf.shape[0] == 5
    assert params["encoder"]["blocks"]["attn"]["query"]["kernel"].shape == (5, 8, 8)


def test_admin_profiled_omega_matches_recursion():
    """ω_i² = Var[x_0] + Σ_{j<i} Var[f_j], from a pass with ω = 1 (checked by re-running that pass)."""
    cfg = ModelConfig(depth=3, block="admin", **TINY)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    omega = np.asarray(model.encoder.blocks.admin_omega[...])  # [L, 2, D]
    assert np.all(omega[..., :1] == omega)  # one value per sublayer, broadcast over features
    assert np.all(np.diff(omega[..., 0].reshape(-1)) > 0)  # accumulated variance only grows
    model.encoder.blocks.admin_omega[...] = jnp.ones_like(model.encoder.blocks.admin_omega[...])
    toks = jax.random.randint(jax.random.key(0), (8, 6), 0, 7)  # any batch: recompute and compare the form
    x0 = model.embed(toks)
    _, diags = model.encoder(x0, train=False)
    var = np.concatenate([[float(jnp.var(x0))], np.asarray(diags["branch_var"]).reshape(-1)])
    expected = np.sqrt(np.cumsum(var)[:-1])
    np.testing.assert_allclose(admin_omega_profiled(jnp.var(x0), diags["branch_var"]).reshape(-1), expected, rtol=1e-5)


def test_admin_closed_form_mode():
    cfg = ModelConfig(depth=6, block="admin", admin_mode="closed_form", **TINY)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model.encoder.blocks.admin_omega[...], 2.017, atol=1e-3)


def test_init_works_under_vmap_over_seeds():
    cfg = ModelConfig(depth=2, **TINY)
    keys = jax.random.split(jax.random.key(0), 3)
    _, params, _ = jax.vmap(lambda k: model_lib.init(cfg, k))(keys)
    q = params["encoder"]["blocks"]["attn"]["query"]["kernel"]
    assert q.shape == (3, 2, 8, 8)
    _, p1, _ = model_lib.init(cfg, keys[1])
    np.testing.assert_allclose(q[1], p1["encoder"]["blocks"]["attn"]["query"]["kernel"], rtol=1e-6)
    assert not np.allclose(q[0], q[1])


def test_no_recompile_across_calls():
    cfg = ModelConfig(depth=3, **TINY)
    gd, params, rest = model_lib.init(cfg, jax.random.key(0))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, rest, toks):
        return jax.grad(lambda p: loss_of(cfg, p, rest, toks, gd))(params)

    for k in range(3):
        params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, step(params, rest, tokens(key=k)))


def test_sequence_mixing_norms_refuse_causal():
    for norm in SEQUENCE_MIXING_NORMS:
        with pytest.raises(ValueError, match="causal"):
            ModelConfig(norm=norm, causal=True)


def test_shape_checks_at_the_boundaries():
    """Wrong ranks and shapes fail when traced, with chex's message, not as a broadcast deep inside."""
    from jaxnorm.step import cross_entropy
    cfg = ModelConfig(depth=2, d_model=16, num_heads=2, d_ff=32, vocab_size=11, max_len=6)
    graphdef, params, rest = model_lib.init(cfg, jax.random.key(0))
    tokens = jnp.zeros((2, 5), jnp.int32)
    logits, _, _ = model_lib.apply(graphdef, params, rest, tokens, train=False)
    assert logits.shape == (2, 5, 11)
    with pytest.raises(AssertionError, match="rank"):
        model_lib.apply(graphdef, params, rest, tokens[0], train=False)
    with pytest.raises(AssertionError, match="shape"):
        model_lib.apply(graphdef, params, rest, tokens, train=True, deltas_LxBxTxD=jnp.zeros((3, 2, 5, 16)))
    batch = {"targets": jnp.zeros((2, 5), jnp.int32), "weights": jnp.ones((2, 4))}
    with pytest.raises(AssertionError, match="shape"):
        cross_entropy(logits, batch, 0.0)
