"""Reading a run directory: summaries from History, strict JSON, partial runs, LR sensitivity."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxnorm import results, rundir
from jaxnorm.history import History
from jaxnorm.sweep import expand, run
from tiny_sweep import tiny_spec


def fake_history(loss_SxN, *, diverged_step=(-1, -1), log_every=2) -> History:
    """A History with hand-set numbers: 2 seeds, 3 layers, profiles at steps 0 and N."""
    loss = np.asarray(loss_SxN, np.float32).T  # [N, S]
    N, S = loss.shape
    ones = np.ones_like(loss)
    grad_all = np.array([[[4.0, 2.0, 1.0], [1.0, 1.0, 1.0]],      # step 0: seed 0 ratio 4, seed 1 ratio 1
                         [[1.0, 2.0, 8.0], [3.0, 1.0, 1.5]]])     # final: seed 0 ratio 1/8, seed 1 ratio 2
    return History(
        seeds=[0, 1], steps=np.arange(N),
        metrics={"loss": loss, "accuracy": 0.5 * ones, "grad_norm": np.arange(N)[:, None] * ones,
                 "grad_norm_clipped": ones, "clipped": ones > 0, "update_norm": ones, "lr": ones,
                 "log_z": ones},
        layer_steps=np.array([0, N]), layers={"grad_norm/all": grad_all, "act_grad_norm": grad_all * 2,
                                              "attn_entropy": np.full((2, S, 3, 2), 0.7)},
        jacobian_steps=np.array([0, N]),
        jacobian={"jac_spectral": np.array([[[1.0, 3.0, 2.0]] * 2, [[1.0, 1.0, 1.0]] * 2]),
                  "jac_end_to_end": np.array([[5.0, 6.0], [7.0, 8.0]])},
        eval_steps=np.array([4, N]), eval_loss=np.array([[2.0, 3.0], [1.5, np.nan]]),
        eval_accuracy=np.array([[0.1, 0.2], [0.3, 0.0]]),
        diverged=np.array(diverged_step) >= 0, diverged_step=np.array(diverged_step),
        nonfinite=[{}, {"step": 5, "what": "loss", "layer": None}] if diverged_step[1] >= 0 else [{}, {}],
        config={"model": {}, "optim": {}, "train": {"log_every": log_every}, "probe": {}},
        timing={"compile_s": 1.0, "run_s": 2.0, "steps_per_s": 3.0},
    )


def test_summarize_seed_from_hand_made_history():
    N = 12
    seed0 = np.linspace(3.0, 1.9, N)
    seed1 = np.concatenate([np.full(5, 3.0), [np.nan] * (N - 5)])  # diverged at step 5
    h = fake_history([seed0, seed1], diverged_step=(-1, 5))
    s0, s1 = rundir.summarize_seed(h, 0), rundir.summarize_seed(h, 1)
    assert s0["initial_loss"] == pytest.approx(3.0)
    assert s0["final_loss"] == pytest.approx(seed0[-rundir.FINAL_WINDOW:].mean(), rel=1e-6)
    assert s0["best_loss"] == pytest.approx(s0["final_loss"], rel=1e-6)  # monotone: the last window is best
    assert s0["grad_ratio_init"] == 4.0 and s0["grad_ratio_final"] == 1 / 8
    assert s1["grad_ratio_init"] == 1.0 and s1["grad_ratio_final"] == 2.0
    assert s0["act_grad_ratio_init"] == 4.0
    assert s0["jac_spectral_max"] == 3.0 and s0["jac_spectral_max_final"] == 1.0
    assert s1["jac_end_to_end_init"] == 6.0 and s0["jac_end_to_end_final"] == 7.0
    assert s0["max_grad_norm"] == N - 1 and s0["attn_entropy_min_final"] == pytest.approx(0.7)
    assert s0["final_eval_loss"] == 1.5 and s0["best_eval_loss"] == 1.5 and s1["best_eval_loss"] == 3.0
    assert not s0["diverged"] and s0["diverged_step"] is None
    assert s1["diverged"] and s1["diverged_step"] == 5
    assert s1["best_loss"] == pytest.approx(3.0)  # only the steps before divergence count
    assert np.isnan(s1["final_loss"])
    assert s1["nonfinite_step"] == 5 and s1["nonfinite_what"] == "loss" and s0["nonfinite_step"] is None
    # strict JSON: NaN becomes null
    text = json.dumps(rundir.jsonable(s1), allow_nan=False)
    assert json.loads(text)["final_loss"] is None and json.loads(text)["final_eval_loss"] is None


def test_layers_whose_gradient_is_exactly_zero_are_counted():
    """A gradient that vanished below float32's range is 0: its log-slope is undefined (NaN), and the
    zero-layer count says why (jaxnorm.findings tells it from a profile that overflowed)."""
    h = fake_history([np.ones(6), np.ones(6)])
    h.layers["grad_norm/all"][-1, 0, :2] = 0.0  # seed 0's first two layers at the end
    h.layers["act_grad_norm"][0, 1, 0] = np.inf  # seed 1's stream at the start: not finite, not vanished
    s0, s1 = rundir.summarize_seed(h, 0), rundir.summarize_seed(h, 1)
    assert s0["grad_zero_layers_final"] == 2 and np.isnan(s0["grad_decades_final"])
    assert s0["grad_zero_layers_init"] == 0 and np.isfinite(s0["grad_decades_init"])
    assert s1["grad_zero_layers_final"] == 0 and np.isfinite(s1["grad_decades_final"])
    assert s1["act_grad_zero_layers_init"] == 0 and np.isnan(s1["act_grad_decades_init"])


def test_metrics_rows_logged_steps_and_evals():
    h = fake_history([np.ones(7), np.ones(7)], log_every=3)
    rows = rundir.metrics_rows(h)
    assert sorted({r["step"] for r in rows}) == [0, 3, 4, 6, 7]  # every 3rd, eval at 4, last 6, final eval 7
    assert len(rows) == 10 and {r["seed"] for r in rows} == {0, 1}
    final = [r for r in rows if r["step"] == 7]
    assert all("loss" not in r for r in final) and final[1]["eval_loss"] is None  # NaN -> null
    assert [r for r in rows if r["step"] == 4][0]["eval_loss"] == 2.0


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        rundir.atomic_write_bytes(target, "not bytes")
    assert list(tmp_path.iterdir()) == []
    rundir.atomic_write_json(target, {"a": np.float32(1.5), "b": float("inf")})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": None}
    assert list(tmp_path.iterdir()) == [target]


def _rows(losses_by_lr, initial=3.0, diverged=()):
    return pd.DataFrame([{"block": "pre_ln", "depth": 8, "optimizer": "adamw", "norm": "layernorm",
                          "attention": "dot", "clip": "none", "lr": lr, "seed": 0, "initial_loss": initial,
                          "final_loss": loss, "diverged": lr in diverged} for lr, loss in losses_by_lr.items()])


def test_lr_sensitivity_flat_curve_is_zero():
    out = results.lr_sensitivity(_rows({1e-3: 1.2, 3e-3: 1.2, 1e-2: 1.2}))
    assert len(out) == 1 and out.lr_sensitivity[0] == pytest.approx(0.0) and out.num_lrs[0] == 3


def test_lr_sensitivity_caps_diverged_and_bad_runs_at_initial_loss():
    # capped losses: 1.0, 2.0, 3.0 (NaN -> L0), 3.0 (diverged -> L0, its 0.5 is ignored), 3.0 (5.0 capped)
    df = _rows({1e-4: 1.0, 3e-4: 2.0, 1e-3: np.nan, 3e-3: 0.5, 1e-2: 5.0}, diverged=(3e-3,))
    out = results.lr_sensitivity(df)
    assert out.lr_sensitivity[0] == pytest.approx((1 + 2 + 3 + 3 + 3) / 5 - 1.0)
    assert out.best_lr[0] == 1e-4 and out.best_loss[0] == 1.0
    # seeds are averaged per lr before the curve is formed; single-lr groups are left out
    two_seeds = pd.concat([_rows({1e-3: 1.0, 1e-2: 2.0}), _rows({1e-3: 3.0, 1e-2: 2.0}).assign(seed=1),
                           _rows({1e-3: 1.0}).assign(depth=2)])
    out = results.lr_sensitivity(two_seeds)
    assert len(out) == 1 and out.depth[0] == 8 and out.lr_sensitivity[0] == pytest.approx(0.0)


def test_load_reads_a_real_run_and_partial_runs(tmp_path):
    spec = tiny_spec(lrs=(1e-3, 2e-3))
    out = tmp_path / "run"
    df = run(spec, out, progress=False)
    ids = [c.cell_id for c in expand(spec)]
    assert list(df.cell_id) == [i for i in ids for _ in range(spec.seeds)] and list(df.seed) == [0, 1, 0, 1]
    assert df.final_loss.dtype == float and df.diverged.dtype == bool
    layers = results.load_layers(out, ids[0])
    ratio = layers["grad_norm/all"][0, :, 0] / layers["grad_norm/all"][0, :, -1]
    np.testing.assert_allclose(df.grad_ratio_init[:2], ratio, rtol=1e-6)
    metrics = results.load_metrics(out)
    assert set(metrics.cell_id) == set(ids) and {"step", "seed", "loss", "step_lr", "lr", "depth", "block"} <= set(metrics.columns)
    first = metrics[(metrics.cell_id == ids[0]) & (metrics.step == 0)]
    np.testing.assert_allclose(first.loss, df.initial_loss[:2], rtol=1e-6)
    assert results.lr_sensitivity(df).num_lrs.tolist() == [2]
    assert "L2-pre_ln" in results.summary_table(df)

    (out / "cells" / ids[1] / "summary.json").unlink()  # as if the second cell had been killed
    partial = results.load(out)
    assert list(partial.cell_id.unique()) == [ids[0]]
    assert set(results.load_metrics(out).cell_id) == {ids[0]}
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert results.load(tmp_path / "empty").empty and results.summary_table(results.load(tmp_path / "empty"))
    with pytest.raises(results.NotARunDir, match="not a run directory"):
        results.load(tmp_path / "nowhere")
