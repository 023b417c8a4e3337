"""The axis table (jaxnorm.axes) is the one place an axis is declared: cell ids are the ones the hand-written
grid made before the table (so run directories resume), and an axis, a block and a metric registered for a
moment run through the whole sweep into the run directory and leave nothing behind."""

import hashlib
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from experiments import depth_sweep
from jaxnorm import axes, metrics, placements, probes, programs
from jaxnorm.config import (ACTIVATIONS, NORM_FREE_BLOCKS, ConfigError, ModelConfig, ProbeConfig, TrainConfig,
                            task_model_config, to_dict)
from jaxnorm.sweep import SweepSpec, expand, preset, run

# --- cell ids: the same bytes as before the table ---------------------------------------------------------

# Recorded from the grid code before the axis table: expand(preset("quick")) in full, and the sha256 of the
# newline-joined ids of preset("init") and of CLIP_LR_GRID below, with their counts.
QUICK_IDS = [
    "L2-post_ln-layernorm-dot-adamw-none-lr0.01-c468b4d2", "L2-pre_ln-layernorm-dot-adamw-none-lr0.01-2d1fca5b",
    "L2-rezero-none-dot-adamw-none-lr0.01-4ad463f1", "L8-post_ln-layernorm-dot-adamw-none-lr0.01-9701e9d0",
    "L8-pre_ln-layernorm-dot-adamw-none-lr0.01-ccc37d2a", "L8-rezero-none-dot-adamw-none-lr0.01-f88cd04d",
    "L24-post_ln-layernorm-dot-adamw-none-lr0.01-1ec4454b", "L24-pre_ln-layernorm-dot-adamw-none-lr0.01-c23b5f15",
    "L24-rezero-none-dot-adamw-none-lr0.01-80913e31",
]
RECORDED = {"init": (78, "5373bafee99af5579fdca08a605ac216710f4084f26e9aa4e4940ed2afa2948c"),
            "grid": (320, "77eeafb8c569ce12eefb22402352c2e2481366118d790597cbd6342354b4ac59")}


def clip_lr_grid() -> SweepSpec:
    """Several clips and learning rates, with spellings that merge (global_norm:1 = global_norm:1.0, 1e-3 =
    0.001) and an integer lr, over norm-free and normed blocks."""
    return preset("quick").replace(
        depths=(2, 8), blocks=("pre_ln", "rezero", "post_ln"), norms=("layernorm", "rmsnorm"),
        optimizers=("adamw", "sgd"), clips=("none", "global_norm:1", "global_norm:1.0", "value:0.5", "agc:0.01"),
        lrs=(1e-3, 0.001, 3e-3, 1e-2, 1))


def frozen_ids(spec: SweepSpec) -> list[str]:
    """The cell ids as the grid code before the axis table made them (its _cell, make_cell_id and expand):
    seven fixed axes, the configs set field by field, the id written out by hand."""
    ids = []
    for depth, block, norm, attention, optimizer, clip, lr in itertools.product(
            spec.depths, spec.blocks, spec.norms, spec.attentions, spec.optimizers, spec.clips, spec.lrs):
        norm = "none" if block in NORM_FREE_BLOCKS else norm
        kind, _, value = clip.partition(":")
        model = task_model_config(spec.model.replace(depth=depth, block=block, norm=norm, attention=attention),
                                  spec.train)
        optim = spec.optim.replace(optimizer=optimizer, clip=kind, clip_value=float(value) if value else 1.0,
                                   lr=float(lr))
        train = spec.train.replace(seeds=spec.seeds, progress=False)
        configs = {"model": to_dict(model), "optim": to_dict(optim), "train": to_dict(train),
                   "probe": to_dict(spec.probe)}
        digest = hashlib.sha256(json.dumps(configs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        cell_id = (f"L{depth}-{block}-{norm}-{attention}-{optimizer}-{clip.replace(':', '')}-lr{float(lr):g}-"
                   f"{digest[:8]}")
        if cell_id not in ids:
            ids.append(cell_id)
    return ids


def test_cell_ids_are_the_ids_from_before_the_table():
    quick, init, grid = preset("quick"), preset("init"), clip_lr_grid()
    assert grid.clips == ("none", "global_norm:1", "value:0.5", "agc:0.01") and grid.lrs == (1e-3, 3e-3, 1e-2, 1)
    for spec in (quick, init, grid):
        assert [c.cell_id for c in expand(spec)] == frozen_ids(spec)
    assert [c.cell_id for c in expand(quick)] == QUICK_IDS
    for name, spec in (("init", init), ("grid", grid)):
        ids = [c.cell_id for c in expand(spec)]
        assert (len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()) == RECORDED[name], name


def test_the_table_lists_the_seven_axes_in_grid_order():
    assert axes.fields() == ["depths", "blocks", "norms", "attentions", "optimizers", "clips", "lrs"]
    assert [a.flag for a in axes.axes()] == ["--depths", "--blocks", "--norms", "--attentions", "--optimizers",
                                             "--clip", "--lrs"]
    assert axes.names("name") == ["block", "norm", "attention", "optimizer", "clip"]
    # how values print: in the cell id, and in figure legends
    assert [axes.AXES["depth"].id_text(8), axes.AXES["clip"].id_text("global_norm:1.0"),
            axes.AXES["lr"].id_text(0.001)] == ["L8", "global_norm1.0", "lr0.001"]
    assert [axes.AXES["depth"].legend(8), axes.AXES["lr"].legend(3e-4), axes.AXES["block"].legend("b2t")] == \
        ["L=8", "lr=0.0003", "b2t"]
    from jaxnorm.plots_training import pooled_nouns
    assert pooled_nouns() == ["learning rates", "norms", "attentions"]  # the stability map's caption


def test_an_unknown_spec_field_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"^SweepSpec: unknown field\(s\) depth; known: attentions, blocks, "):
        SweepSpec(depth=(2,))


# --- one axis, one block and one metric, registered for the duration of a test ------------------------------

ACTIVATION_AXIS = axes.Axis(
    "activations", "activation", "--activations", ("relu",), "name", allowed=lambda: ", ".join(ACTIVATIONS),
    valid=lambda v: v in ACTIVATIONS, sets=lambda v: {"model": {"activation": v}}, noun="activations")
HALF_PRE = placements.Placement("half_pre", "x ← x + ½·F(N(x))", "test", "pre", final_norm=True,
                                branch_scale=lambda depth, alpha: 0.5)
SQUARED = metrics.Metric("grad_norm_squared", "layer", "‖∂loss/∂θ_l‖² of all of layer l's parameters",
                         "grads")


def with_squared_norm(layer_stats):
    """probes.layer_stats plus the registered metric, computed where per-layer metrics are computed."""
    def stats(*args, **kwargs):
        out = layer_stats(*args, **kwargs)
        if "grad_norm/all" in out:
            out["grad_norm_squared"] = out["grad_norm/all"] ** 2
        return out
    return stats


@pytest.fixture
def registered(monkeypatch):
    """The axis, block and metric registered; everything restored, and compiled programs dropped, afterwards."""
    before = (dict(axes.AXES), dict(placements.PLACEMENTS), dict(metrics.METRICS), probes.layer_stats)
    programs.clear()  # no program traced without the metric may be reused
    with monkeypatch.context() as m:
        m.setitem(axes.AXES, "activation", ACTIVATION_AXIS)
        m.setitem(placements.PLACEMENTS, "half_pre", HALF_PRE)
        m.setitem(metrics.METRICS, SQUARED.name, SQUARED)
        m.setattr(probes, "layer_stats", with_squared_norm(probes.layer_stats))
        yield
    programs.clear()
    assert (dict(axes.AXES), dict(placements.PLACEMENTS), dict(metrics.METRICS), probes.layer_stats) == before
    assert [c.cell_id for c in expand(preset("quick"))] == QUICK_IDS


def test_a_registered_axis_block_and_metric_reach_the_run_directory(registered, tmp_path):
    probe = ProbeConfig(jacobian=False)
    spec = SweepSpec(depths=(2,), blocks=("half_pre",), activations=("gelu",), seeds=1,
                     model=ModelConfig(d_model=8, num_heads=2, d_ff=16),
                     train=TrainConfig(task="copy", steps=3, batch_size=2, seq_len=4, log_every=1, eval_every=3,
                                       eval_batches=1),
                     probe=probe)
    df = run(spec, tmp_path, progress=False)

    cell_id = "L2-half_pre-layernorm-dot-adamw-none-lr0.001-gelu-" + expand(spec)[0].cell_id[-8:]
    assert list(df.cell_id) == [cell_id] and expand(spec)[0].activation == "gelu"
    csv = pd.read_csv(tmp_path / "results.csv")
    axis_columns = ["depth", "block", "norm", "attention", "optimizer", "clip", "lr", "activation"]
    assert list(csv.columns[1:9]) == axis_columns and csv.activation.tolist() == ["gelu"]
    config = json.loads((tmp_path / "cells" / cell_id / "config.json").read_text())
    assert config["cell"]["activation"] == "gelu" and config["model"]["activation"] == "gelu"
    assert config["model"]["block"] == "half_pre"
    assert "- activations: gelu" in (tmp_path / "report.md").read_text()

    from jaxnorm.results import load_layers
    layers = load_layers(tmp_path, cell_id)
    assert SQUARED.name in metrics.recorded("layer", probe)
    assert set(metrics.recorded("layer", probe)) <= set(layers)
    np.testing.assert_allclose(layers[SQUARED.name], layers["grad_norm/all"] ** 2, rtol=1e-6)
    assert layers[SQUARED.name].shape[1:] == (1, 2)  # [profiles, seeds, layers]

    # the command line reads the table too: the axis's flag, its values and its refusal
    parser = depth_sweep.build_parser()
    assert "--activations" in parser.format_help()
    cli_spec = depth_sweep.build_spec(parser.parse_args(["--activations", "gelu,relu,gelu"]))
    assert cli_spec.activations == ("gelu", "relu")
    with pytest.raises(ConfigError, match=r"^SweepSpec\.activations \(--activations\): invalid value 'tanh'; "
                                          r"allowed: relu, gelu$"):
        depth_sweep.build_spec(parser.parse_args(["--activations", "tanh"]))
