"""Per-layer figures (jaxnorm.plots_layers) on small hand-made data: row titles name the profile's step,
the Jacobian figure draws the Frobenius estimate and names the spectral method, legends sit outside the
panels, and captions make no norm claim over norm-free blocks. Nothing compiles."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from jaxnorm import figures, plots, plots_layers

S = 2


def cells(blocks=("pre_ln", "rezero"), depths=(2, 4), last_step=40, diverged=()):
    """df (one row per cell and seed) and layers (cell_id -> arrays) with two profiles: step 0 and last_step."""
    rows, layers = [], {}
    rng = np.random.default_rng(0)
    for block in blocks:
        for L in depths:
            cid = f"L{L}-{block}"
            norm = "none" if block in ("rezero", "no_norm") else "layernorm"
            for s in range(S):
                rows.append({"cell_id": cid, "block": block, "depth": L, "norm": norm, "lr": 1e-3, "seed": s,
                             "diverged": (cid, s) in diverged})
            arr = 1 + rng.random((2, S, L))
            layers[cid] = {"grad_norm/all": arr, "grad_norm/mlp_out": arr / 2, "act_grad_norm": arr,
                           "token_alignment": arr / 3, "jac_spectral": 2 * arr, "jac_frobenius": arr,
                           "layer_steps": np.array([0, last_step]), "jacobian_steps": np.array([0, last_step]),
                           "seeds": np.arange(S)}
    return pd.DataFrame(rows), layers


def suptitle(fig):
    return " ".join(fig._suptitle.get_text().split())  # unwrapped


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_row_titles_name_the_step():
    df, layers = cells(last_step=37)
    fig = plots_layers.grad_profile(df, layers)
    t = titles(fig)
    assert len(t) == 4
    assert all("step 0 (initialisation)" in x for x in t[:2])
    assert all("step 37 (end of training)" in x for x in t[2:])
    untrained = {c: {**v, "layer_steps": v["layer_steps"][:1]} for c, v in layers.items()}
    assert len(plots_layers.act_grad_profile(df, untrained).axes) == 2   # step 0 only: one row


def test_a_cell_that_stopped_early_is_named():
    df, layers = cells(blocks=("post_ln",))
    layers["L4-post_ln"]["layer_steps"] = np.array([0, 20])
    t = titles(plots_layers.grad_profile(df, layers))
    assert "step 40 (end of training)" in t[1] and "L=4 stopped at step 20" in t[1]


def test_profile_legend_is_outside_the_panels():
    df, layers = cells()
    for fig in (plots_layers.grad_profile(df, layers), plots_layers.token_alignment(df, layers),
                plots_layers.jacobian_profile(df, layers)):
        assert all(ax.get_legend() is None for ax in fig.axes)
        assert len(fig.legends) == 1 and fig.legends[0]._outside_loc


def test_jacobian_figure_draws_frobenius_and_names_the_method(tmp_path):
    df, layers = cells(blocks=("pre_ln",), depths=(3,))
    fig = plots_layers.jacobian_profile(df, layers, spectral_method="power")
    ax = fig.axes[0]
    styles = [line.get_linestyle() for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert styles.count("-") == 1 and styles.count("--") == 1         # spectral solid, Frobenius dashed
    solid, dashed = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert solid.get_color() == dashed.get_color()
    np.testing.assert_allclose(dashed.get_ydata(), np.exp(np.log(layers["L3-pre_ln"]["jac_frobenius"][0]).mean(0)))
    assert "power iteration" in suptitle(fig)
    assert ax.get_ylabel().startswith("$")                              # mathtext, not literal braces
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("Frobenius" in t for t in legend_text) and any("power iteration" in t for t in legend_text)

    # Without an explicit method it is read from each cell's resolved probe config (a LayerStore's run_dir).
    class Store(dict):
        run_dir = tmp_path
    for cid in layers:
        (tmp_path / "cells" / cid).mkdir(parents=True)
        (tmp_path / "cells" / cid / "summary.json").write_text(
            json.dumps({"resolved": {"probe": {"spectral_method": "lanczos"}}}))
    fig = plots_layers.jacobian_profile(df, Store(layers))
    assert "by Lanczos" in suptitle(fig)


def test_end_of_training_leaves_out_diverged_seeds():
    df, layers = cells(blocks=("pre_ln",), depths=(3,), diverged={("L3-pre_ln", 1)})
    ax = plots_layers.grad_profile(df, layers).axes[1]
    (line,) = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    np.testing.assert_allclose(line.get_ydata(), layers["L3-pre_ln"]["grad_norm/all"][-1, 0])


def test_all_zero_panel_says_so():
    df, layers = cells(blocks=("rezero",))
    for v in layers.values():
        v["grad_norm/mlp_out"] = np.zeros_like(v["grad_norm/mlp_out"])
    fig = plots_layers.grad_profile(df, layers, "mlp_out")
    ax = fig.axes[0]
    assert any("exactly 0" in t.get_text() for t in ax.texts)
    fig.savefig(io.BytesIO(), format="png")  # no panel has a value: every axis stays linear, and it renders
    assert {a.get_yscale() for a in fig.axes} == {"linear"}


def test_a_row_of_zeros_alone_renders_beside_a_row_with_values():
    """ReZero alone: its MLP gradients are exactly 0 at initialisation (α = 0) and positive after training.
    The empty row stays linear (a log axis with no positive value has no range and cannot be drawn); the
    other row is on a log scale."""
    df, layers = cells(blocks=("rezero",))
    for v in layers.values():
        v["grad_norm/mlp_out"][0] = 0.0
    fig = plots_layers.grad_profile(df, layers, "mlp_out")
    fig.savefig(io.BytesIO(), format="png")
    init, end = fig.axes[0], fig.axes[1]
    assert init.get_yscale() == "linear" and any("exactly 0" in t.get_text() for t in init.texts)
    assert end.get_yscale() == "log"
    # beside a block with values in the same row, the empty panel shares that row's log axis
    df, layers = cells(blocks=("pre_ln", "rezero"))
    for cid, v in layers.items():
        if "rezero" in cid:
            v["grad_norm/mlp_out"][0] = 0.0
    fig = plots_layers.grad_profile(df, layers, "mlp_out")
    fig.savefig(io.BytesIO(), format="png")
    assert [a.get_yscale() for a in fig.axes[:4]] == ["log"] * 4
    with pytest.raises(ValueError, match="allowed"):
        plots_layers.grad_profile(df, layers, "mlp")


def test_caption_names_no_norm_for_norm_free_blocks():
    df = pd.DataFrame({"block": ["pre_ln", "pre_ln", "rezero", "post_ln"], "depth": [2, 2, 2, 2],
                       "norm": ["layernorm", "rmsnorm", "none", "layernorm"]})
    kept, caption = plots.fix_others(df, keep=("block", "depth"))
    assert sorted(kept.block) == ["post_ln", "pre_ln", "rezero"]
    assert caption == "norm=layernorm (none for rezero)"
    # Only normed blocks shown: the plain claim.
    _, caption = plots.fix_others(df[df.block != "rezero"], keep=("block", "depth"))
    assert caption == "norm=layernorm"
    # The block axis fixed to a norm-free block: no norm is claimed at all.
    df2 = pd.DataFrame({"block": ["rezero", "pre_ln", "pre_ln"], "depth": [2, 2, 2], "attention": ["dot"] * 3,
                        "norm": ["none", "layernorm", "rmsnorm"]})
    kept, caption = plots.fix_others(df2, keep=("attention", "depth"))
    assert list(kept.block) == ["rezero"] and caption == "block=rezero"


def test_mlp_out_figure_is_registered():
    assert "grad_profile_mlp_out.png" in figures.FIGURES and "grad_profile_mlp_out.png" in figures.figure_makers()
    assert list(figures.FIGURES) == list(figures.figure_makers())
    df, layers = cells()
    fig = figures.figure_makers()["grad_profile_mlp_out.png"](df, layers, lambda: None)
    assert "W2" in suptitle(fig) and "none for rezero" in suptitle(fig)
