"""Figures and report of a run directory.

Most tests use a run directory written by the real writers (`rundir.write_sweep_json`, `rundir.write_cell`)
from synthetic Histories whose outcome is known (post_ln diverges at depth 8, pre_ln trains everywhere,
post_ln's gradient vanishes towards the input), so the report's computed observations can be checked
and nothing compiles. One test runs the real sweep end to end on the tiny cells test_sweep.py compiles.
"""

import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxnorm import figures, plots, plots_layers, plots_training, report, results, rundir
from jaxnorm.history import History
from jaxnorm.sweep_spec import expand, preset, spec_to_dict

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = set(figures.FIGURES)
STEPS, LOG_EVERY, S, V = 20, 5, 2, 16


def synthetic_spec():
    q = preset("quick")
    return q.replace(depths=(2, 8), blocks=("post_ln", "pre_ln"), optimizers=("adamw",), clips=("none",),
                     lrs=(1e-3, 3e-3), seeds=S, model=q.model.replace(d_model=16, num_heads=2, d_ff=32),
                     train=q.train.replace(steps=STEPS, log_every=LOG_EVERY, batch_size=8, seq_len=8),
                     probe=q.probe.replace(spectrum=True, probe_every=10))


def synthetic_history(cell, rng) -> History:
    """Known outcome: pre_ln trains (loss → 0.3·L0); post_ln trains at depth 2, and at depth 8 seed 0
    stays at L0 while seed 1 diverges at step 12. post_ln's gradients shrink 2× per layer towards the input."""
    L, H = cell.depth, cell.model.num_heads
    l0 = np.log(V) + 0.05 * rng.standard_normal(S)
    t = np.arange(STEPS)[:, None]
    loss = l0 * (0.3 + 0.7 * np.exp(-t / 4.0)) * (1 + 0.01 * rng.standard_normal((STEPS, S)))
    diverged_step = np.full(S, -1)
    if cell.block == "post_ln" and L == 8:
        loss[:, 0] = l0[0]
        loss[12:, 1] = np.inf
        loss = loss[:STEPS]
        diverged_step[1] = 12
    metrics = {"loss": loss, "accuracy": 1 - loss / l0, "grad_norm": 1 + rng.random((STEPS, S)),
               "lr": np.full((STEPS, S), cell.lr), "log_z": 3 + 0.1 * t * np.ones(S)}
    layer_steps = np.r_[np.arange(0, STEPS, LOG_EVERY), STEPS]
    P = len(layer_steps)
    decay = 0.5 if cell.block == "post_ln" else 1.2
    profile = decay ** (L - 1 - np.arange(L))                     # first layer smallest for post_ln
    grad = profile * (1 + 0.1 * rng.random((P, S, L)))
    layers = {"grad_norm/all": grad, "grad_norm/attn_qk": 0.3 * grad, "grad_norm/mlp_out": 0.2 * grad, "act_grad_norm": 2 * grad,
              "act_rms": np.ones((P, S, L)), "token_alignment": np.linspace(0.1, 0.6, L) * np.ones((P, S, L)),
              "attn_entropy": np.ones((P, S, L, H)), "attn_logit_max": 2 + np.arange(P)[:, None, None, None]
              * cell.lr * 1e3 * np.ones((P, S, L, H)), "branch_ratio": np.ones((P, S, L, 2))}
    jac_steps = np.array([0, 10, STEPS])
    K = len(jac_steps)
    jacobian = {"jac_spectral": 1 + rng.random((K, S, L)), "jac_frobenius": rng.random((K, S, L)),
                "jac_end_to_end": 1 + L * rng.random((K, S)),
                "jac_singular_values": np.sort(rng.lognormal(0, L / 4, (K, S, 64)))[..., ::-1]}
    eval_steps = np.array([10, STEPS])
    return History(seeds=[0, 1], steps=np.arange(STEPS), metrics=metrics, layer_steps=layer_steps, layers=layers,
                   jacobian_steps=jac_steps, jacobian=jacobian, eval_steps=eval_steps,
                   eval_loss=loss[[9, -1]], eval_accuracy=np.zeros((2, S)), diverged=diverged_step >= 0,
                   diverged_step=diverged_step, nonfinite=[{}, {}],
                   config={"train": {"log_every": LOG_EVERY}, **cell.configs()},
                   timing={"compile_s": 1.0, "run_s": 1.0, "steps_per_s": 20.0})


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    spec = synthetic_spec()
    cells = expand(spec)
    (out / "cells").mkdir()
    rundir.atomic_write_json(out / "sweep.json", {"format_version": rundir.FORMAT_VERSION,
                                                  "spec": spec_to_dict(spec), "num_cells": len(cells),
                                                  "cell_ids": [c.cell_id for c in cells],
                                                  "environment": {"argv": ["experiments/depth_sweep.py", "--x"]}})
    rng = np.random.default_rng(0)
    for cell in cells:
        path = rundir.cell_dir(out, cell.cell_id)
        rundir.write_config(path, cell)
        rundir.write_cell(path, cell, synthetic_history(cell, rng), 1.0)
    return out


def plot_sweep_main():
    spec = importlib.util.spec_from_file_location("plot_sweep", ROOT / "scripts" / "plot_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="session")
def drawn(run_dir):
    """scripts/plot_sweep.py in process: draw_all (whose returned paths it prints) then write_report. Drawn
    once per session: the tests that read it share one xdist worker (`xdist_group`)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert plot_sweep_main()([str(run_dir)]) == 0
    printed = [Path(line) for line in out.getvalue().splitlines()]
    assert printed[-1] == run_dir / "report.md"
    return printed[:-1]


def assert_png(path: Path):
    data = path.read_bytes()
    assert len(data) > 5000 and data[:8] == PNG, path


@pytest.mark.xdist_group("plots-drawn")
def test_draw_all_writes_every_figure(run_dir, drawn):
    paths = drawn
    assert {p.name for p in paths} == ALL_FIGURES
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == sorted(ALL_FIGURES)
    for p in paths:
        assert_png(p)


def test_figure_functions_take_data_and_skip_absent_data(run_dir):
    df = results.load(run_dir)
    layers = plots.LayerStore(run_dir)
    fig = plots_layers.grad_profile(df, layers)
    assert fig is not None and len(fig.axes) == 4          # 2 blocks × (init, end)
    one_depth = df[df.depth == 2]
    assert plots_training.loss_vs_depth(one_depth) is None   # needs >= 2 depths
    one_lr = df[df.lr == 1e-3]
    assert plots_training.lr_sensitivity_curves(one_lr) is None
    assert plots_training.logit_growth(one_lr, results.load_metrics(run_dir), layers) is None
    no_spectrum = {c: {k: v for k, v in layers[c].items() if k != "jac_singular_values"} for c in df.cell_id}
    assert plots_layers.jacobian_spectrum(df, no_spectrum) is None
    untrained = df.assign(steps=0)
    assert plots_training.stability_map(untrained) is None and plots_training.loss_vs_depth(untrained) is None


def test_plot_sweep_script_refuses_a_non_run_dir(tmp_path):
    (tmp_path / "cells").mkdir()  # no sweep.json
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_sweep.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "not a run directory" in r.stderr and not (tmp_path / "figures").exists()


def test_real_sweep_draws_figures(tmp_path):
    """The real sweep (same tiny cells as test_sweep.py, so its compiled programs are shared) writes the
    figures and report itself; one depth means no loss-vs-depth figure."""
    from jaxnorm.sweep import run

    q = preset("quick")
    spec = q.replace(depths=(2,), blocks=("pre_ln",), norms=("layernorm",), attentions=("dot",),
                     optimizers=("adamw",), clips=("none",), lrs=(1e-3, 3e-3), seeds=2,
                     model=q.model.replace(d_model=16, num_heads=2, d_ff=32),
                     train=q.train.replace(task="reverse", steps=6, batch_size=8, seq_len=8, log_every=2,
                                           eval_every=4),
                     probe=q.probe.replace(probe_every=4))
    run(spec, tmp_path, progress=False)  # calls figures.draw_all and report.write_report at the end
    names = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert names == ALL_FIGURES - {"loss_vs_depth.png", "jacobian_spectrum.png"}
    for name in names:
        assert_png(tmp_path / "figures" / name)
    text = (tmp_path / "report.md").read_text()
    assert text.count("| pre_ln | 2 | 0.001 |") == 1 and text.count("| pre_ln | 2 | 0.003 |") == 1



def test_fixing_the_norm_axis_keeps_norm_free_blocks():
    """rezero/no_norm cells are recorded with norm 'none'; a figure fixed to one norm must still show them."""
    import pandas as pd
    from jaxnorm.plots import fix_others
    df = pd.DataFrame({"block": ["pre_ln", "pre_ln", "rezero", "post_ln"], "depth": [2, 2, 2, 2],
                       "norm": ["layernorm", "rmsnorm", "none", "layernorm"]})
    kept, caption = fix_others(df, keep=("block", "depth"))
    assert sorted(kept.block) == ["post_ln", "pre_ln", "rezero"]
    assert "rmsnorm" not in set(kept.norm)
    assert caption == "norm=layernorm (none for rezero)"


def _large_grid():
    """Per-seed rows and per-step metrics of a grid with every axis the compare preset varies: 2 blocks (one
    norm-free) × 2 depths × 2 optimizers × 2 clips × 3 learning rates × 2 seeds."""
    import itertools

    import pandas as pd

    rows, steps = [], []
    for block, depth, opt, clip, lr in itertools.product(("pre_ln", "rezero"), (2, 8), ("adamw", "rmsprop"),
                                                        ("none", "global_norm:1.0"), (1e-3, 1e-2, 1e-1)):
        norm = "none" if block == "rezero" else "layernorm"
        cid = f"L{depth}-{block}-{opt}-{clip}-{lr}"
        for seed in range(2):
            final = 1.0 + lr * depth + 0.01 * seed
            rows.append(dict(cell_id=cid, block=block, depth=depth, norm=norm, attention="dot", optimizer=opt,
                             clip=clip, lr=lr, seed=seed, task="reverse", steps=20, initial_loss=2.8,
                             final_loss=final, diverged=lr > 0.05 and block == "rezero", num_symbols=16,
                             vocab_size=18, seq_len=16))
            for step in range(0, 20, 5):
                steps.append(dict(cell_id=cid, block=block, depth=depth, norm=norm, attention="dot", optimizer=opt,
                                  clip=clip, lr=lr, seed=seed, step=step, loss=2.8 - step * 0.05,
                                  eval_loss=np.nan))
    return pd.DataFrame(rows), pd.DataFrame(steps)


def test_large_grids_get_a_row_per_optimizer_and_clip_and_a_short_legend():
    df, metrics = _large_grid()
    fig = plots_training.lr_sensitivity_curves(df)
    axes = np.asarray(fig.axes).reshape(4, 2)  # optimizer × clip rows (norm varies only through rezero), blocks
    titles = [ax.get_title() for ax in axes[:, 0]]
    assert len(set(titles)) == 4 and all("pre_ln" in t for t in titles)
    for ax in axes.ravel():  # one line per depth, with its sensitivity
        labels = ax.get_legend_handles_labels()[1]
        assert [lab.split(" ")[0] for lab in labels] == ["L=2", "L=8"]
    fig = plots_training.loss_curves(metrics, df=df)
    assert len(fig.axes) == 4 * 2
    (key,) = fig.legends  # depths, learning rates, eval squares and chance, once
    labels = [t.get_text() for t in key.get_texts()]
    assert sorted(labels) == sorted(["chance (uniform guess)", "L=2", "L=8", "lr=0.001", "lr=0.01", "lr=0.1",
                                     "eval loss"])
