"""The training loop: it learns, seeds vmap exactly, divergence is recorded, reruns are identical."""

import gc
import os

import jax
import numpy as np
import pytest

from jaxnorm import programs
from jaxnorm import trainer as train_lib
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig

SMALL = ModelConfig(depth=2, d_model=32, num_heads=2, d_ff=64)
NO_JAC = ProbeConfig(jacobian=False)


def tiny_train(**kw):
    base = dict(task="reverse", steps=20, batch_size=8, seq_len=8, num_symbols=8, log_every=5, eval_every=10,
                eval_batches=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _cached_program_keys() -> list[tuple]:
    return programs.cached_keys("train")


def test_pre_ln_learns_reverse():
    h = train_lib.train(SMALL, OptimConfig(optimizer="adamw", lr=1e-2, warmup_steps=20),
                        tiny_train(steps=300, batch_size=32, log_every=50, eval_every=100), NO_JAC)
    first, last = h.metrics["loss"][:10].mean(), h.metrics["loss"][-10:].mean()
    assert first > 1.9  # ≈ ln(8) for 8 symbols at chance
    assert last < 0.35 * first, (first, last)
    assert h.eval_accuracy[-1, 0] > 0.8
    assert not h.diverged.any()


def test_mlm_trains_bidirectional_on_the_corpus():
    h = train_lib.train(SMALL, OptimConfig(lr=1e-2, warmup_steps=5),
                        tiny_train(task="mlm", seq_len=16, text_bytes=200_000, steps=60, batch_size=16,
                                   log_every=20, eval_every=30), NO_JAC)
    model = h.config["model"]
    assert model["causal"] is False and model["vocab_size"] > 60   # the corpus vocabulary + MASK
    loss = h.metrics["loss"][:, 0]
    assert np.isfinite(loss).all() and np.isfinite(h.eval_loss).all() and not h.diverged.any()
    assert loss[:5].mean() > 4.0                    # ≈ ln V at chance
    assert loss[-10:].mean() < loss[:5].mean() - 1.0, (loss[:5], loss[-10:])


def test_vmapped_seeds_equal_separate_runs_and_compile_once():
    optim = OptimConfig(lr=2e-3)
    programs.clear()
    together = train_lib.train(SMALL, optim, tiny_train(seeds=3, seed=5), NO_JAC)
    chunk_programs = [k for k in _cached_program_keys() if k[0] == "chunk"]
    assert len(chunk_programs) == 1  # 3 seeds, 20 steps in chunks of 5: one compiled program
    for s in range(3):
        alone = train_lib.train(SMALL, optim, tiny_train(seeds=1, seed=5 + s), NO_JAC)
        np.testing.assert_allclose(together.metrics["loss"][:, s], alone.metrics["loss"][:, 0], rtol=2e-4, atol=1e-5)
        np.testing.assert_allclose(together.layers["grad_norm/all"][:, s], alone.layers["grad_norm/all"][:, 0],
                                   rtol=2e-3, atol=1e-6)
    assert not np.allclose(together.metrics["loss"][:, 0], together.metrics["loss"][:, 1])


def test_forced_divergence_is_recorded_not_raised():
    h = train_lib.train(SMALL.replace(block="no_norm", depth=4), OptimConfig(optimizer="sgd", lr=50.0, schedule="constant"),
                        tiny_train(steps=40), NO_JAC)
    assert h.diverged.all()
    step = int(h.diverged_step[0])
    assert 0 <= step < 40
    assert h.metrics["loss"].shape[0] < 40  # the loop stopped early
    loss = h.metrics["loss"][:, 0]
    assert not (np.isfinite(loss[step]) and loss[step] <= 3.0 * loss[0])  # the recorded step is the bad one
    assert np.all(np.isfinite(loss[:step])) and np.all(loss[:step] <= 3.0 * loss[0])


def test_nonfinite_gradient_is_located():
    h = train_lib.train(SMALL.replace(block="no_norm", depth=4), OptimConfig(optimizer="sgd", lr=1e4, schedule="constant"),
                        tiny_train(steps=30, divergence_factor=1e30), NO_JAC)
    rec = h.nonfinite[0]
    assert rec, "a lr of 1e4 without norms must overflow"
    assert rec["what"] in ("loss", "gradient", "update")
    if rec["what"] == "gradient":
        assert 0 <= rec["layer"] < 4


def test_skip_nonfinite_keeps_parameters_finite():
    optim = OptimConfig(optimizer="sgd", lr=1e4, schedule="constant", skip_nonfinite=True)
    h = train_lib.train(SMALL.replace(block="no_norm", depth=4), optim, tiny_train(steps=30, divergence_factor=1e30),
                        NO_JAC)
    assert np.all(np.isfinite(h.layers["param_norm"]))


def test_rerun_is_identical():
    args = (SMALL, OptimConfig(lr=1e-3, clip="global_norm"), tiny_train(seeds=2))
    a, b = train_lib.train(*args, NO_JAC), train_lib.train(*args, NO_JAC)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    np.testing.assert_array_equal(a.eval_loss, b.eval_loss)


def test_lr_change_does_not_recompile():
    programs.clear()
    h1 = train_lib.train(SMALL, OptimConfig(lr=1e-3), tiny_train(), NO_JAC)
    n = len(_cached_program_keys())
    h2 = train_lib.train(SMALL, OptimConfig(lr=3e-3), tiny_train(), NO_JAC)
    assert len(_cached_program_keys()) == n
    assert h2.timing["compile_s"] < h1.timing["compile_s"]
    assert h2.metrics["lr"].max() == pytest.approx(3 * h1.metrics["lr"].max(), rel=1e-5)


def test_clipping_metrics():
    h = train_lib.train(SMALL, OptimConfig(lr=1e-3, clip="global_norm", clip_value=1e-3), tiny_train(), NO_JAC)
    assert h.metrics["clipped"].all()
    np.testing.assert_allclose(h.metrics["grad_norm_clipped"], 1e-3, rtol=1e-4)
    assert (h.metrics["grad_norm"] > 1e-3).all()


def test_init_profile_only():
    h = train_lib.train(SMALL.replace(depth=3), OptimConfig(), tiny_train(steps=0), ProbeConfig(power_iters=5))
    assert list(h.layer_steps) == [0]
    assert h.layers["grad_norm/all"].shape == (1, 1, 3)
    assert h.jacobian["jac_spectral"].shape == (1, 1, 3)
    assert np.all(np.isfinite(h.layers["act_grad_norm"]))


def test_history_shapes():
    h = train_lib.train(SMALL, OptimConfig(), tiny_train(seeds=2, steps=12, log_every=5, eval_every=5),
                        ProbeConfig(probe_every=10, power_iters=3, hutchinson_samples=2))
    assert h.metrics["loss"].shape == (12, 2)
    assert list(h.layer_steps) == [0, 5, 10, 12]  # each chunk's first step, then the final parameters
    assert h.layers["attn_entropy"].shape == (4, 2, 2, 2)
    assert list(h.jacobian_steps) == [0, 10, 12]
    assert list(h.eval_steps) == [5, 10, 12]
    assert jax.numpy.isfinite(h.jacobian["jac_end_to_end"]).all()


def _memory_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts Linux memory mappings")
def test_compiled_programs_do_not_accumulate_over_cells():
    # Every XLA:CPU executable pins memory mappings until freed; Linux allows ~65k per process, and a sweep
    # that kept every cell's programs crashed after ~50 cells. Only the last MAX_CACHED_OWNERS stay.
    model = ModelConfig(depth=1, d_model=16, num_heads=2, d_ff=32)
    cfg = TrainConfig(task="copy", steps=0, seq_len=4, batch_size=4, progress=False)
    probe = ProbeConfig(power_iters=2, hutchinson_samples=1, probe_batch=1)
    # Start from nothing awaiting collection: executables that earlier tests in this process dropped are
    # unmapped when the garbage collector runs, which would otherwise happen mid-count.
    programs.clear()
    gc.collect()
    counts = [_memory_maps()]
    for depth in range(1, 5):
        train_lib.train(model.replace(depth=depth), OptimConfig(), cfg, probe)
        gc.collect()
        counts.append(_memory_maps())
    assert programs.num_owners("train") == programs.MAX_CACHED_OWNERS["train"]
    # A cell's worth: the larger of the first two cells' growth (in a process that has freed executables
    # before, new ones may partly reuse its old mappings, so a single cell can read low).
    one_cell = max(counts[1] - counts[0], counts[2] - counts[1])
    assert one_cell > 0
    # The two cells after the cache filled up add less than one cell's worth (unbounded: ~2 cells' worth).
    assert counts[-1] - counts[programs.MAX_CACHED_OWNERS["train"]] < one_cell, counts
