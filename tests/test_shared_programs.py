"""One program per model structure: depth as an unbatched argument (inactive layers skipped), the final
measurement from the train chunk, and cells packed side by side (learning rate, weight decay, clip
threshold and seeds as per-run data) give the same History as each cell trained alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import model as model_lib
from jaxnorm import packing, programs
from jaxnorm import trainer as train_lib
from jaxnorm.config import ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.padding import padded_config
from jaxnorm.sweep_spec import SweepSpec, expand

M = ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16)
T = TrainConfig(task="reverse", steps=6, batch_size=4, seq_len=8, num_symbols=6, log_every=3, eval_every=3,
                eval_batches=1, progress=False)
P = ProbeConfig(probe_every=3, power_iters=3, hutchinson_samples=1, probe_batch=1)
NO_JAC = P.replace(jacobian=False)


# Softmax ignores a shift shared by one query's logits, and the key bias adds q·b_k to all of them alike:
# its gradient is zero up to rounding, which Adam-like optimizers scale up to full steps. Two correct runs
# therefore part in the key bias (not compared) and, through it, in the raw logits' maximum and the update norms.
LOOSER = {"attn_logit_max": 3e-2, "update_norm": 3e-3, "update_ratio": 3e-3}


def assert_same_history(got, ref, rtol=2e-4, atol=1e-6):
    """Every recorded array and the final state agree to float32 rounding; the step lists exactly."""
    for name in ("metrics", "layers", "jacobian"):
        a, b = getattr(ref, name), getattr(got, name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert a[k].shape == b[k].shape, (name, k)
            np.testing.assert_allclose(b[k], a[k], rtol=LOOSER.get(k, rtol), atol=atol, err_msg=f"{name}/{k}")
    for name in ("steps", "layer_steps", "jacobian_steps", "eval_steps", "diverged", "diverged_step"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    np.testing.assert_allclose(got.eval_loss, ref.eval_loss, rtol=rtol, atol=atol)
    assert got.nonfinite == ref.nonfinite and got.seeds == ref.seeds and got.config == ref.config
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref.params)
    got_leaves = jax.tree_util.tree_leaves_with_path(got.params)
    assert [p for p, _ in got_leaves] == [p for p, _ in ref_leaves]
    for (path, a), (_, b) in zip(ref_leaves, got_leaves):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:  # see LOOSER
            continue
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("block, optimizer", [("post_ln", "adamw"), ("deepnorm", "sgd"), ("admin", "adafactor"),
                                              ("mix_ln", "rmsprop"), ("rezero", "adamw")])
def test_padded_training_equals_unpadded(block, optimizer):
    """Trained padded to a deeper stack (inactive layers skipped), every recorded quantity and the final
    parameters equal the unpadded run's: the depth constants, weight decay and per-layer optimizers
    (Adafactor) see only the active layers. (Lion is left out: its sign turns the key bias's rounding-level
    gradient into full steps, so two correct runs part by more than rounding.)"""
    m, o = M.replace(block=block), OptimConfig(optimizer=optimizer, lr=3e-3, weight_decay=0.1, warmup_steps=2)
    ref = train_lib.train(m, o, T, NO_JAC)
    got = train_lib.train(m, o, T, NO_JAC, pad_to=4)
    assert_same_history(got, ref)
    assert got.layers["grad_norm/all"].shape[-1] == 2


def test_padded_jacobian_probes_and_steps_zero_equal_unpadded():
    m = M.replace(block="pre_ln", depth=3)
    for t in (T, T.replace(steps=0)):
        assert_same_history(train_lib.train(m, OptimConfig(), t, P, pad_to=5), train_lib.train(m, OptimConfig(), t, P))


def test_inactive_layers_are_a_branch_under_vmap():
    """The active depth is unbatched, so the layer switch stays a `cond` (one branch runs) inside the vmap
    over seeds, instead of becoming a select that computes both."""
    cfg = padded_config(M.replace(block="pre_ln"), 4)
    graphdef, params, rest = jax.vmap(lambda k: model_lib.init(cfg, k, 2))(jax.random.split(jax.random.key(0), 2))
    graphdef = model_lib.graphdef_of(cfg)
    tokens = jnp.zeros((2, 8), jnp.int32)
    fwd = jax.vmap(lambda p, r, a: model_lib.apply(graphdef, p, r, tokens, train=False, active_depth=a)[0],
                   in_axes=(0, 0, None))
    jaxpr = str(jax.make_jaxpr(fwd)(params, rest, jnp.int32(2)))
    assert "cond[" in jaxpr and "select_n" not in jaxpr.split("cond[", 1)[0][-200:]


def test_one_program_set_serves_every_depth_and_the_final_measurement():
    """Cells of depths 2 and 3 padded to 3, trained for 6 steps with a last chunk of a different length:
    init, chunk and eval compile once each (no separate measurement program)."""
    programs.clear()
    log = programs.start_compile_log()
    t = T.replace(steps=7)
    for depth in (2, 3):
        train_lib.train(M.replace(depth=depth), OptimConfig(), t, NO_JAC, pad_to=3)
    kinds = sorted(k[0] for k in programs.cached_keys("train"))
    assert kinds == ["chunk", "eval", "init"]
    assert log.programs == 3 and log.compile_s > 0


def test_packed_cells_equal_cells_trained_alone():
    """Four cells packed into one program (learning rates, weight decays, clip threshold vs no clipping,
    seeds and seed counts all differing) give each cell's own History; one of them diverges at once and
    stops there, as it does alone, while the others train on."""
    t = T.replace(steps=9)
    o = OptimConfig(schedule="constant")
    members = [
        (o.replace(lr=3e-3, clip="global_norm", clip_value=0.5), t.replace(seeds=2)),
        (o.replace(lr=1e-2, weight_decay=0.3), t.replace(seed=7)),
        (o.replace(lr=1e-3, clip="global_norm", clip_value=1e-3), t.replace(seed=3, seeds=1)),
        (o.replace(lr=30.0), t.replace(seed=1)),  # diverges in its first chunk
    ]
    m = M.replace(block="post_ln")
    packed = train_lib.train_pack(m, members, P, pad_to=3)
    assert packed[3].diverged.all() and not packed[0].diverged.any()
    assert packed[3].metrics["loss"].shape[0] == 3 and packed[0].metrics["loss"].shape[0] == 9
    for (o, tc), got in zip(members[:3], packed):
        assert_same_history(got, train_lib.train(m, o, tc, P))
    # The diverging cell stops where it stops alone; past its first update its numbers are chaotic (steps of
    # 30 in every key-bias entry, see LOOSER), so beyond the record's shape only the first step is compared.
    got, ref = packed[3], train_lib.train(m, *members[3], P)
    for name in ("steps", "layer_steps", "jacobian_steps", "eval_steps", "diverged_step"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    assert {k: v.shape for k, v in got.layers.items()} == {k: v.shape for k, v in ref.layers.items()}
    np.testing.assert_allclose(got.metrics["loss"][0], ref.metrics["loss"][0], rtol=1e-5)


def test_unpackable_cells_are_refused():
    with pytest.raises(ConfigError, match="one clip kind per pack"):
        packing.program_optim([OptimConfig(clip="global_norm"), OptimConfig(clip="value")])
    with pytest.raises(ConfigError, match="differ beyond"):
        packing.program_optim([OptimConfig(optimizer="adamw"), OptimConfig(optimizer="rmsprop")])
    with pytest.raises(ConfigError, match="train configs that differ beyond seed"):
        train_lib.train_pack(M, [(OptimConfig(), T), (OptimConfig(), T.replace(steps=3))])


def test_packs_group_cells_by_structure_and_width():
    spec = SweepSpec(depths=(2, 4), blocks=("pre_ln",), lrs=(1e-3, 3e-3, 1e-2), clips=("none", "global_norm:1.0"),
                     seeds=2, model=M, train=T)
    cells = expand(spec)
    packs = packing.packs(cells, width=8, share_depth=True)
    # Per depth, 6 cells of 2 seeds: none and global_norm pack together, 8 runs at most per pack.
    assert [len(p) for p in packs] == [4, 2, 4, 2]
    assert all(len({c.depth for c in p}) == 1 and sum(c.train.seeds for c in p) <= 8 for p in packs)
    assert sorted(c.cell_id for p in packs for c in p) == sorted(c.cell_id for c in cells)
    assert [len(p) for p in packing.packs(cells, width=1, share_depth=False)] == [1] * 12
