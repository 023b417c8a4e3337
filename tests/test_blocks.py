"""Each block's placement formula against a plain-jnp reimplementation of its paper's equation.

The references compute the MLP and the norm with plain jnp from the module's own parameter values; the
attention branch is the module's (tested against plain jnp in test_attention.py), so what is under test
here is where the residual, the norms and the scalars sit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm.blocks import Block
from jaxnorm.config import BLOCKS, ModelConfig
from jaxnorm.init_schemes import admin_omega_closed_form, deepnorm_constants, subln_gain

D, F, H, B, T = 8, 16, 2, 2, 5


def tiny(block, **kw):
    return ModelConfig(depth=kw.pop("depth", 6), d_model=D, num_heads=H, d_ff=F, block=block,
                       vocab_size=7, max_len=T, **kw)


def randomise(module, key):
    """Give every parameter random non-trivial values so a misplaced scale or bias cannot hide."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    nnx.update(module, jax.tree.unflatten(treedef, [
        0.5 * jax.random.normal(k, l.shape) + (1.0 if l.ndim <= 1 else 0.0) for k, l in zip(keys, leaves)]))


def ln(norm, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * norm.scale[...] + norm.bias[...]


def mlp(m, x, mid=None):
    h = jax.nn.relu(x @ m.fc1.kernel[...] + m.fc1.bias[...])
    if mid is not None:
        h = mid(h)
    return h @ m.fc2.kernel[...] + m.fc2.bias[...]


def attn(blk, x, kind=None):
    """The attention branch; for normformer/subln the part after the heads is recomputed by hand."""
    if kind not in ("normformer", "subln"):
        return blk.attn(x, train=False)[0]
    a = blk.attn
    q, k, v = a.project(x, train=False)
    p = jax.nn.softmax(jnp.einsum("bhik,bhjk->bhij", q, k) / math.sqrt(D // H), axis=-1)
    ctx = jnp.einsum("bhij,bhjk->bhik", p, v)
    if kind == "normformer":
        ctx = ctx * a.head_scale[...][:, None, None]
    ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape)
    if kind == "subln":
        ctx = ln(a.sub_norm, ctx)
    return ctx @ a.out.kernel[...] + a.out.bias[...]


def reference(blk, kind, x, depth):
    a = lambda h: attn(blk, h, kind)  # noqa: E731
    m = lambda h: mlp(blk.mlp, h)  # noqa: E731
    if kind == "post_ln":
        x1 = ln(blk.norm1, x + a(x))
        return ln(blk.norm2, x1 + m(x1))
    if kind == "pre_ln":
        x1 = x + a(ln(blk.norm1, x))
        return x1 + m(ln(blk.norm2, x1))
    if kind == "sandwich":
        x1 = x + ln(blk.norm1_out, a(ln(blk.norm1, x)))
        return x1 + ln(blk.norm2_out, m(ln(blk.norm2, x1)))
    if kind == "deepnorm":
        alpha = (2 * depth) ** 0.25
        x1 = ln(blk.norm1, alpha * x + a(x))
        return ln(blk.norm2, alpha * x1 + m(x1))
    if kind == "rezero":
        g = blk.rezero_alpha[...]
        x1 = x + g * a(x)
        return x1 + g * m(x1)
    if kind == "admin":
        w = blk.admin_omega[...]
        x1 = ln(blk.norm1, w[0] * x + a(x))
        return ln(blk.norm2, w[1] * x1 + m(x1))
    if kind == "no_norm":
        x1 = x + a(x)
        return x1 + m(x1)
    if kind == "no_residual":
        return ln(blk.norm2, m(ln(blk.norm1, a(x))))
    if kind == "b2t":
        h = ln(blk.norm1, x + a(x))
        return ln(blk.norm2, h + m(h) + x)
    if kind == "normformer":
        x1 = x + ln(blk.norm_attn_out, a(ln(blk.norm1, x)))
        return x1 + mlp(blk.mlp, ln(blk.norm2, x1), mid=lambda h: ln(blk.mlp.mid_norm, h))
    if kind == "subln":
        x1 = x + a(ln(blk.norm1, x))
        return x1 + mlp(blk.mlp, ln(blk.norm2, x1), mid=lambda h: ln(blk.mlp.mid_norm, h))
    if kind == "depth_mup":
        s = depth ** -0.5
        x1 = x + s * a(ln(blk.norm1, x))
        return x1 + s * m(ln(blk.norm2, x1))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [b for b in BLOCKS if b != "mix_ln"])
def test_block_matches_formula(kind):
    depth = 6
    blk = Block(tiny(kind, depth=depth), rngs=nnx.Rngs(0))
    randomise(blk, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    y, diag = blk(x, train=False)
    np.testing.assert_allclose(y, reference(blk, kind, x, depth), rtol=2e-5, atol=2e-5)
    assert diag["attn_entropy"].shape == (H,)


def test_rezero_block_is_identity_at_init():
    blk = Block(tiny("rezero"), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    y, _ = blk(x, train=False)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("depth", [1, 6, 18, 100])
def test_deepnorm_constants(depth):
    alpha, beta = deepnorm_constants(depth)
    assert alpha == pytest.approx((2 * depth) ** 0.25)
    assert beta == pytest.approx((8 * depth) ** -0.25)


@pytest.mark.parametrize("depth", [2, 12])
def test_deepnorm_init_gains(depth):
    """Value/output/FFN kernels are Xavier-uniform with gain β; query/key keep gain 1 (Wang et al. 2022)."""
    from jaxnorm.model import Model
    cfg = ModelConfig(depth=depth, d_model=32, num_heads=4, d_ff=64, block="deepnorm", vocab_size=7, max_len=4)
    blocks = Model(cfg, rngs=nnx.Rngs(0)).encoder.blocks
    beta = (8 * depth) ** -0.25
    for name, mod, gain in [("query", blocks.attn.query, 1.0), ("value", blocks.attn.value, beta),
                            ("out", blocks.attn.out, beta), ("fc1", blocks.mlp.fc1, beta),
                            ("fc2", blocks.mlp.fc2, beta)]:
        w = np.asarray(mod.kernel[...])
        bound = gain * math.sqrt(6.0 / (w.shape[-2] + w.shape[-1]))
        assert np.abs(w).max() <= bound * (1 + 1e-6), name
        assert np.abs(w).max() > 0.95 * bound, name  # the uniform's support is actually reached


def test_admin_closed_form_and_subln_gain():
    assert admin_omega_closed_form(12) == pytest.approx(2.017, abs=1e-3)
    assert admin_omega_closed_form(6) == pytest.approx(math.sqrt(7 / math.log(7) - 1))
    assert subln_gain(6) == pytest.approx(math.sqrt(math.log(12)))


@pytest.mark.parametrize("depth,alpha", [(8, 0.25), (6, 0.5), (3, 0.25)])
def test_mix_ln_is_post_ln_below_alpha_l_then_pre_ln(depth, alpha):
    """Mix-LN (Li et al. 2024): layer l < ⌊α·L⌋ follows the Post-LN formula, the others Pre-LN's."""
    blk = Block(tiny("mix_ln", depth=depth, mix_ln_alpha=alpha), rngs=nnx.Rngs(0))
    randomise(blk, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    cut = math.floor(alpha * depth)
    for layer in range(depth):
        y, _ = blk(x, train=False, layer=jnp.int32(layer))
        kind = "post_ln" if layer < cut else "pre_ln"
        np.testing.assert_allclose(y, reference(blk, kind, x, depth), rtol=2e-5, atol=2e-5, err_msg=f"layer {layer}")


def test_mix_ln_stack_matches_a_loop_of_its_two_placements():
    """The scanned Mix-LN encoder equals a plain loop: the first ⌊αL⌋ blocks Post-LN, then Pre-LN, then the
    final norm (the stack ends with Pre-LN layers)."""
    from jaxnorm.model import Model
    depth = 8
    model = Model(tiny("mix_ln", depth=depth, mix_ln_alpha=0.25), rngs=nnx.Rngs(0))
    randomise(model, jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (B, T), 0, 7)
    logits, _ = model(tokens)
    x = model.embed(tokens)
    graphdef, stacked = nnx.split(model.encoder.blocks)
    for l in range(depth):
        layer_block = nnx.merge(graphdef, jax.tree.map(lambda a: a[l], stacked))
        x = reference(layer_block, "post_ln" if l < 2 else "pre_ln", x, depth)
    expected = ln(model.final_norm, x) @ model.head.kernel[...] + model.head.bias[...]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_placement_registered_alone_builds_trains_and_follows_its_formula(monkeypatch):
    """The recipe of ARCHITECTURE.md: a new block is one registry entry. A temporary Pre-LN variant with
    halved branches, registered in jaxnorm.placements only, validates, matches its formula and trains."""
    from jaxnorm import placements
    from jaxnorm.config import OptimConfig, ProbeConfig, TrainConfig
    from jaxnorm.trainer import train

    entry = placements.Placement("half_pre", "x ← x + ½·F(N(x))", "test", "pre", final_norm=True,
                                 branch_scale=lambda depth, alpha: 0.5)
    monkeypatch.setitem(placements.PLACEMENTS, "half_pre", entry)
    blk = Block(tiny("half_pre"), rngs=nnx.Rngs(0))
    randomise(blk, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    x1 = x + 0.5 * attn(blk, ln(blk.norm1, x))
    np.testing.assert_allclose(blk(x, train=False)[0], x1 + 0.5 * mlp(blk.mlp, ln(blk.norm2, x1)), rtol=2e-5, atol=2e-5)
    h = train(ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16, block="half_pre"), OptimConfig(),
              TrainConfig(task="copy", steps=2, batch_size=2, seq_len=4, log_every=1, progress=False),
              ProbeConfig(jacobian=False))
    assert np.isfinite(h.metrics["loss"]).all() and h.layers["grad_norm/all"].shape[1:] == (1, 2)
