"""Remedies beyond the basics: init schemes, ReZero's isometry, rank collapse without skips, z-loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm import model as model_lib
from jaxnorm import probes
from jaxnorm.config import ModelConfig, ProbeConfig
from jaxnorm.init_schemes import small_init_std, t_fixup_scale
from jaxnorm.step import cross_entropy

D, F = 32, 64


def blocks_of(**kw):
    cfg = ModelConfig(d_model=D, num_heads=4, d_ff=F, vocab_size=11, max_len=6, **kw)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    return model, model.encoder.blocks


def xavier_bound(w):
    return math.sqrt(6.0 / (w.shape[-2] + w.shape[-1]))


def assert_uniform_bound(w_LxIxO, bound_L, name):
    """Uniform(±b) samples: max |w| is just below b (with D×D draws it comes within 5%)."""
    top = np.abs(np.asarray(w_LxIxO)).reshape(w_LxIxO.shape[0], -1).max(axis=1)
    np.testing.assert_array_less(top, np.asarray(bound_L) * (1 + 1e-6), err_msg=name)
    assert np.all(top > 0.95 * np.asarray(bound_L)), name


def test_ds_init_scales_layer_l_by_inverse_sqrt_l():
    """DS-Init: U(±γ/√l), γ = √(6/(d_in+d_out)), l = 1..L (Zhang, Titov & Sennrich 2019)."""
    L = 5
    _, blocks = blocks_of(depth=L, init="ds_init")
    for mod in (blocks.attn.query, blocks.attn.value, blocks.mlp.fc1, blocks.mlp.fc2):
        w = mod.kernel[...]
        assert_uniform_bound(w, xavier_bound(w) / np.sqrt(np.arange(1, L + 1)), "ds_init")


def test_depth_scaled_init_scales_residual_projections():
    L = 6
    _, blocks = blocks_of(depth=L, init="depth_scaled")
    for mod, factor in ((blocks.attn.out, 1 / math.sqrt(2 * L)), (blocks.mlp.fc2, 1 / math.sqrt(2 * L)),
                        (blocks.attn.query, 1.0), (blocks.mlp.fc1, 1.0)):
        w = mod.kernel[...]
        assert_uniform_bound(w, np.full(L, xavier_bound(w) * factor), "depth_scaled")


def test_t_fixup_scales_value_path_and_embeddings():
    """T-Fixup (Huang et al. 2020), encoder: value/output/FFN weights and embeddings × 0.67·N^-¼."""
    L = 8
    model, blocks = blocks_of(depth=L, init="t_fixup", block="no_norm")
    s = 0.67 * L ** -0.25
    assert t_fixup_scale(L) == pytest.approx(s)
    for mod, factor in ((blocks.attn.value, s), (blocks.attn.out, s), (blocks.mlp.fc1, s), (blocks.mlp.fc2, s),
                        (blocks.attn.query, 1.0), (blocks.attn.key, 1.0)):
        w = mod.kernel[...]
        assert_uniform_bound(w, np.full(L, xavier_bound(w) * factor), "t_fixup")
    emb = np.asarray(model.token_embed.embedding[...])
    assert np.std(emb) == pytest.approx(s * D ** -0.5, rel=0.15)


def test_small_init_std():
    _, blocks = blocks_of(depth=2, init="small")
    w = np.asarray(blocks.mlp.fc1.kernel[...])
    assert small_init_std(D) == pytest.approx(math.sqrt(2 / (5 * D)))
    assert np.std(w) == pytest.approx(small_init_std(D), rel=0.05)


@pytest.mark.parametrize("depth", [1, 6])
def test_rezero_is_dynamically_isometric_at_init(depth):
    """ReZero at init: x_L = x_0, so every singular value of ∂x_L/∂x_0 is exactly 1 (Bachlechner et al. 2020)."""
    cfg = ModelConfig(depth=depth, d_model=8, num_heads=2, d_ff=16, vocab_size=7, max_len=4, block="rezero")
    gd, params, rest = model_lib.init(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 4), 0, 7)
    out = probes.jacobian_stats(gd, params, rest, tokens, jax.random.key(2),
                                ProbeConfig(spectrum=True, power_iters=10, hutchinson_samples=4))
    np.testing.assert_allclose(out["jac_singular_values"], 1.0, atol=1e-6)
    assert out["jac_singular_values"].shape == (1 * 4 * 8,)
    # and a Pre-LN stack at init is not an isometry: the test above can fail
    gd2, p2, r2 = model_lib.init(cfg.replace(block="pre_ln"), jax.random.key(0))
    sv = probes.jacobian_stats(gd2, p2, r2, tokens, jax.random.key(2), ProbeConfig(spectrum=True, power_iters=10,
                                                                                 hutchinson_samples=4))
    assert np.ptp(np.asarray(sv["jac_singular_values"])) > 0.1


def _last_layer_alignment(block, depth):
    cfg = ModelConfig(depth=depth, d_model=32, num_heads=4, d_ff=64, vocab_size=16, max_len=12, block=block)
    model = model_lib.Model(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (4, 12), 0, 16)
    _, diags = model(tokens, train=False)
    return np.asarray(diags["token_alignment"])


def test_token_alignment_collapses_without_skips():
    """Without residual connections token representations align within a few layers (rank collapse,
    Dong et al. 2021); Pre-LN skips slow it down a lot. (At Xavier init Pre-LN's alignment still creeps up
    with depth — Noci et al. 2022 — so the contrast, not an absolute level, is the invariant.)"""
    no_skip = _last_layer_alignment("no_residual", 24)
    with_skip = _last_layer_alignment("pre_ln", 24)
    assert no_skip[0] < 0.2  # distinct random tokens at the input
    assert no_skip[3] > 0.99 and no_skip[-1] > 0.99
    assert with_skip[3] < 0.8
    assert with_skip[-1] < 0.95


def test_z_loss_gradient_matches_hand_derivative():
    """∂/∂logits of c·log²Z is 2c·log Z·softmax(logits) (Wortsman et al. 2023)."""
    key = jax.random.key(0)
    logits = 3.0 * jax.random.normal(key, (2, 3, 5))
    batch = {"targets": jnp.zeros((2, 3), jnp.int32), "weights": jnp.ones((2, 3))}
    c = 0.1
    g_with = jax.grad(lambda z: cross_entropy(z, batch, c)[0])(logits)
    g_without = jax.grad(lambda z: cross_entropy(z, batch, 0.0)[0])(logits)
    log_z = jax.nn.logsumexp(logits, -1, keepdims=True)
    expected = 2 * c * log_z * jax.nn.softmax(logits, -1) / 6.0  # mean over 6 weighted positions
    np.testing.assert_allclose(g_with - g_without, expected, rtol=1e-5, atol=1e-7)


def hand_cross_entropy(logits, batch, z_loss):
    """The weighted CE and z-loss written out: log Z − logit of the target, averaged over the weights."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"]
    denom = jnp.maximum(jnp.sum(w), 1.0)
    ce = -jnp.sum(w * (target - log_z)) / denom
    return ce + z_loss * jnp.sum(w * jnp.square(log_z)) / denom, ce, jnp.sum(w * log_z) / denom


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("weights", ["ones", "with_zeros", "all_zero"])
def test_cross_entropy_equals_hand_formula(scale, weights):
    """Large logits (log Z ≈ max logit) and weights with zeros (masked positions must not count, even with
    a huge loss there); the loss's gradient too."""
    k1, k2 = jax.random.split(jax.random.key(3))
    logits = (scale * jax.random.normal(k1, (3, 4, 7))).astype(jnp.bfloat16 if scale == 1.0 else jnp.float32)
    targets = jax.random.randint(k2, (3, 4), 0, 7)
    w = {"ones": jnp.ones((3, 4)), "with_zeros": jnp.ones((3, 4)).at[0].set(0.0).at[2, 1].set(0.0),
         "all_zero": jnp.zeros((3, 4))}[weights]
    batch = {"targets": targets, "weights": w}
    total, metrics = cross_entropy(logits, batch, 1e-3)
    want_total, want_ce, want_log_z = hand_cross_entropy(logits, batch, 1e-3)
    np.testing.assert_allclose(total, want_total, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], want_ce, rtol=1e-6)
    np.testing.assert_allclose(metrics["log_z"], want_log_z, rtol=1e-6)
    assert np.isfinite(float(total)) and (weights == "all_zero") == (float(total) == 0.0)
    g = jax.grad(lambda z: cross_entropy(z, batch, 1e-3)[0])(logits.astype(jnp.float32))
    want_g = jax.grad(lambda z: hand_cross_entropy(z, batch, 1e-3)[0])(logits.astype(jnp.float32))
    np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-7)
    if weights == "with_zeros":
        np.testing.assert_array_equal(g[0], 0.0)


def test_z_loss_keeps_log_partition_small():
    from jaxnorm.config import OptimConfig, TrainConfig
    from jaxnorm.trainer import train
    base = TrainConfig(task="copy", steps=60, batch_size=16, seq_len=8, log_every=20, eval_every=60, progress=False)
    model = ModelConfig(depth=2, d_model=32, num_heads=2, d_ff=64)
    optim = OptimConfig(lr=1e-2, schedule="constant")
    off = train(model, optim, base, ProbeConfig(jacobian=False))
    on = train(model, optim, base.replace(z_loss=1e-1), ProbeConfig(jacobian=False))
    drift_off = abs(float(off.metrics["log_z"][-5:].mean()))
    drift_on = abs(float(on.metrics["log_z"][-5:].mean()))
    assert drift_off > 1.0  # the run without z-loss does drift
    assert drift_on < 0.5 * drift_off
