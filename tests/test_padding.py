"""Depth as data (jaxnorm.padding): a padded stack with `active` acting layers is the unpadded model of that
depth, for every block and depth-dependent init, and one compiled program serves several depths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import model as model_lib
from jaxnorm import trainer as train_lib
from jaxnorm.config import BLOCKS, ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.padding import PaddedModelConfig, padded_config, unpad_layers
from jaxnorm.paths import path_names
from jaxnorm.sweep import pack_cells, shared_depth
from jaxnorm.sweep_spec import expand, preset

TINY = ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16, vocab_size=7, max_len=6)
PAD = 4
# Every block, and the init schemes and modes whose constants depend on depth.
CASES = [TINY.replace(block=b) for b in BLOCKS] + [
    TINY.replace(block="pre_ln", init=i) for i in ("small", "depth_scaled", "t_fixup", "ds_init")] + [
    TINY.replace(block="admin", admin_mode="closed_form")]


def _loss_and_grads(cfg: ModelConfig, key: jax.Array, tokens: jax.Array, active: jax.Array | None,
                    skip: bool = False):
    """Logits and parameter gradients of a freshly initialised model (train-mode forward, as the step runs).
    `skip`: pass the active depth to the forward pass too, so inactive layers are skipped (`lax.cond`)
    rather than computed as identities."""
    graphdef, params, rest = model_lib.init(cfg, key, active)

    def loss(p):
        logits, _, _ = model_lib.apply(graphdef, p, rest, tokens, train=True, active_depth=active if skip else None)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, params, grads


def _block_split(tree) -> tuple[dict, dict]:
    """(stacked block leaves, other leaves) of a parameter tree, by path."""
    blocks, other = {}, {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = path_names(path)
        (blocks if "blocks" in names else other)[names] = np.asarray(leaf)
    return blocks, other


@pytest.mark.parametrize("skip", [False, True], ids=["identity", "skipped"])
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.block}-{c.init}-{c.admin_mode}")
def test_padded_model_is_the_unpadded_model(cfg, skip):
    """Inactive layers computed as identities (the Jacobian probes) or skipped by `lax.cond` (training and
    evaluation, under vmap over seeds too): the unpadded model's logits, parameters and gradients."""
    key, tokens = jax.random.key(3), jax.random.randint(jax.random.key(4), (3, 6), 0, 7)
    ref_logits, ref_params, ref_grads = jax.jit(
        lambda k, t: _loss_and_grads(cfg, k, t, None))(key, tokens)
    padded = padded_config(cfg, PAD)
    run = lambda k, t, a: _loss_and_grads(padded, k, t, a, skip)  # noqa: E731
    if skip:  # two seeds (the same key twice) vmapped, the active depth unbatched: the branch stays a branch
        keys = jnp.stack([key, key])
        out = jax.jit(jax.vmap(run, in_axes=(0, None, None)))(keys, tokens, jnp.int32(2))
        logits, params, grads = jax.tree.map(lambda a: a[1], out)
    else:
        logits, params, grads = jax.jit(run)(key, tokens, jnp.int32(2))

    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    (pb, po), (rb, ro) = _block_split(params), _block_split(ref_params)
    (gb, go), (rgb, rgo) = _block_split(grads), _block_split(ref_grads)
    assert pb.keys() == rb.keys() and po.keys() == ro.keys()
    for name in rb:  # the acting layers are exactly the unpadded model's; the padded ones get no gradient
        np.testing.assert_allclose(pb[name][:2], rb[name], rtol=1e-6, atol=1e-7, err_msg=str(name))
        np.testing.assert_allclose(gb[name][:2], rgb[name], rtol=1e-4, atol=1e-6, err_msg=str(name))
        assert not np.any(gb[name][2:]), name
    for name in ro:
        np.testing.assert_allclose(po[name], ro[name], rtol=1e-6, atol=1e-7, err_msg=str(name))
        np.testing.assert_allclose(go[name], rgo[name], rtol=1e-4, atol=1e-6, err_msg=str(name))


def test_one_padded_program_serves_every_depth():
    """DeepNorm's α and β depend on depth: the same compiled program at active depth 1, 2 and 3 gives each
    unpadded model's logits."""
    cfg = TINY.replace(block="deepnorm")
    key, tokens = jax.random.key(0), jax.random.randint(jax.random.key(1), (2, 6), 0, 7)
    padded = padded_config(cfg, PAD)
    program = jax.jit(lambda k, t, a: _loss_and_grads(padded, k, t, a)[0])
    for depth in (1, 2, 3):
        ref = jax.jit(lambda k, t: _loss_and_grads(cfg.replace(depth=depth), k, t, None)[0])(key, tokens)
        np.testing.assert_allclose(program(key, tokens, jnp.int32(depth)), ref, rtol=1e-5, atol=1e-6)
    assert program._cache_size() == 1


def test_padded_train_history_equals_unpadded():
    """`train(pad_to=...)`: every recorded quantity of a steps = 0 run (scalars, per-layer probes, Jacobian
    probes, eval) equals the unpadded run's, and the per-layer arrays have the unpadded depth."""
    m = ModelConfig(depth=3, d_model=16, num_heads=2, d_ff=32, block="deepnorm")
    t = TrainConfig(task="reverse", steps=0, batch_size=4, seq_len=8, seeds=2, progress=False)
    p = ProbeConfig(power_iters=5, hutchinson_samples=2, probe_batch=2)
    ref = train_lib.train(m, OptimConfig(), t, p)
    got = train_lib.train(m, OptimConfig(), t, p, pad_to=6)
    for name in ("metrics", "layers", "jacobian"):
        a, b = getattr(ref, name), getattr(got, name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert a[k].shape == b[k].shape, k
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=f"{name}/{k}")
    np.testing.assert_allclose(got.eval_loss, ref.eval_loss, rtol=1e-5)
    assert got.config == ref.config and got.layers["grad_norm/all"].shape[-1] == 3


def test_padded_config_is_its_own_type():
    padded = padded_config(TINY, 5)
    assert isinstance(padded, PaddedModelConfig) and padded.depth == 5
    assert {f.name: getattr(padded, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "depth"} == \
        {f.name: getattr(TINY, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "depth"}
    assert padded != TINY.replace(depth=5)  # never shares a cache entry with the unpadded model
    with pytest.raises(ConfigError, match="pad_to: invalid value 1; allowed: an int >= the model's depth 2"):
        padded_config(TINY, 1)


def test_unpad_layers_cuts_only_layer_axes():
    rows = {"grad_norm/all": np.zeros((2, 3, 6)), "attn_entropy": np.zeros((2, 3, 6, 4)),
            "amplification": np.zeros((2, 3)), "jac_singular_values": np.zeros((2, 3, 6))}
    cut = unpad_layers(rows, 4)
    assert cut["grad_norm/all"].shape == (2, 3, 4) and cut["attn_entropy"].shape == (2, 3, 4, 4)
    assert cut["amplification"].shape == (2, 3)
    assert cut["jac_singular_values"].shape == (2, 3, 6)  # all singular values of one matrix: no layer axis


def test_sweeps_pad_to_their_largest_depth_and_order_packs_by_structure():
    spec = preset("init")
    assert shared_depth(spec) == 64 and shared_depth(preset("quick")) == 24
    assert shared_depth(spec.replace(depths=(8,))) is None and shared_depth(spec, share=False) is None
    cells = expand(spec.replace(depths=(2, 8, 4), blocks=("post_ln", "pre_ln", "rezero")))
    order = [(c.block, c.depth) for p in pack_cells(cells, pack=4) for c in p]
    assert order == [(b, d) for b in ("post_ln", "pre_ln", "rezero") for d in (2, 8, 4)]
    assert all(len(p) == 1 for p in pack_cells(cells, share=False))
