"""--save-params: each seed's parameters saved with orbax in its cell, reloaded into a model that gives the same
logits as the trained parameters in memory; the integrity manifest covers the checkpoint files."""

import json
import shutil

import jax
import numpy as np
import pytest

import jaxnorm
from jaxnorm import checkpoints, integrity, rundir, trainer
from jaxnorm import sweep as sweep_lib
from jaxnorm.cell_outputs import CellOutputs
from jaxnorm.model import graphdef_of
from jaxnorm.paths import path_string
from tiny_sweep import tiny_spec

SPEC = tiny_spec(lrs=(1e-3,))


def _seed(tree, s):
    return jax.tree.map(lambda a: np.asarray(a)[s], tree)


def _leaves(tree):
    return {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """The tiny cell trained by the sweep with --save-params init+final, and the History it trained."""
    histories = []
    real = trainer.train_pack

    def keep(*args, **kwargs):
        histories.extend(real(*args, **kwargs))
        return histories[-len(args[1]):]

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "train_pack", keep)
    out = tmp_path_factory.mktemp("ckpt") / "run"
    sweep_lib.run(SPEC, out, progress=False, outputs=CellOutputs(save_params="init+final"))
    mp.undo()
    (cell_id,) = json.loads((out / "sweep.json").read_text())["cell_ids"]
    return out, cell_id, histories[0]


def test_reloaded_model_gives_the_trained_logits(saved):
    out, cell_id, h = saved
    cell = sweep_lib.expand(SPEC)[0]
    tokens = jaxnorm.probe_tokens(cell.train, cell.probe)
    model_cfg = jaxnorm.resolve_config(cell.model, cell.train)
    assert model_cfg == checkpoints.cell_model_config(out, cell_id)
    graphdef = graphdef_of(model_cfg)
    for s, seed in enumerate(h.seeds):
        g, params, rest = jaxnorm.load_params(out, cell_id, seed)
        logits = jaxnorm.apply(g, params, rest, tokens, train=False)[0]
        expected = jaxnorm.apply(graphdef, _seed(h.params, s), _seed(h.rest, s), tokens, train=False)[0]
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
        assert _leaves(params).keys() == _leaves(h.params).keys()
        for name, value in _leaves(jaxnorm.load_opt_state(out, cell_id, seed)).items():
            np.testing.assert_array_equal(value, _leaves(_seed(h.opt_state, s))[name], err_msg=name)
        _, init_params, init_rest = jaxnorm.load_params(out, cell_id, seed, which="init")
        for name, value in _leaves(init_params).items():
            np.testing.assert_array_equal(value, _leaves(_seed(h.init_params, s))[name], err_msg=name)
        # the documented init key: jaxnorm.init from it gives the run's initial parameters
        _, fresh, _ = jaxnorm.init(model_cfg, jaxnorm.seed_keys(seed)[0])
        for name, value in _leaves(fresh).items():
            np.testing.assert_allclose(value, _leaves(init_params)[name], rtol=1e-6, atol=1e-7, err_msg=name)
        assert jaxnorm.apply(g, init_params, init_rest, tokens, train=False)[0].shape == logits.shape


def test_the_manifest_covers_the_checkpoints_and_damage_is_named(saved, tmp_path):
    out, cell_id, h = saved
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "cells" / cell_id
    summary = integrity.verify_cell(path)
    files = [n for n in summary["files"] if n.startswith("checkpoints/")]
    on_disk = sorted(str(p.relative_to(path)) for p in (path / "checkpoints").rglob("*") if p.is_file())
    assert sorted(files) == on_disk and "checkpoints/meta.json" in files
    assert {f.split("/")[2] for f in files if f.count("/") > 2} == {f"seed{s}" for s in h.seeds}
    with pytest.raises(checkpoints.NoCheckpoint, match="seed 7"):
        jaxnorm.load_params(copy, cell_id, 7)
    with pytest.raises(ValueError, match="which"):
        jaxnorm.load_params(copy, cell_id, 0, which="best")
    with pytest.raises(checkpoints.NoCheckpoint, match="--save-params none"):
        checkpoints._meta(path, {"cell_id": cell_id, "files": {}})
    # a flipped byte in one seed's arrays: that seed does not load, and a resume redoes the cell
    victim = max((path / n for n in files if "/final/seed1/" in n), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(integrity.DamagedCell, match="seed1.*corrupt"):
        jaxnorm.load_params(copy, cell_id, 1)
    assert "corrupt" in sweep_lib.cell_problem(copy, cell_id)
    # a summary listing a file outside the cell is damage, not a path to follow
    summary["files"]["checkpoints/../../x"] = {"bytes": 1, "sha256": "0"}
    rundir.atomic_write_json(path / "summary.json", summary)
    with pytest.raises(integrity.DamagedCell, match="outside the cell"):
        integrity.check_sizes(path)


def test_an_unfinished_cells_checkpoint_never_loads_and_is_replaced(saved, tmp_path):
    out, cell_id, h = saved
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "cells" / cell_id
    (path / "summary.json").unlink()  # killed after the checkpoint's rename, before summary.json
    (path / ".checkpoints.999999999.x.partial").mkdir()  # and another run's half-written folder
    with pytest.raises(integrity.DamagedCell, match="not finished"):
        jaxnorm.load_params(copy, cell_id, 0)
    assert checkpoints.save(path, h, "none") == []
    assert not (path / "checkpoints").exists() and not list(path.glob(".checkpoints.*"))


def test_a_padded_cell_reloads_with_the_unpadded_models_logits(tmp_path):
    """A sweep pads every cell to the grid's largest depth (jaxnorm.padding), but a checkpoint holds the cell's
    own model: its parameters have the cell's depth and give the logits of the unpadded model the seed's init
    key gives."""
    spec = SPEC.replace(depths=(1, 2), train=SPEC.train.replace(steps=0))
    out = tmp_path / "run"
    sweep_lib.run(spec, out, progress=False, outputs=CellOutputs(save_params="final"))
    for cell in sweep_lib.expand(spec):
        graphdef, params, rest = jaxnorm.load_params(out, cell.cell_id, 1)
        assert all(leaf.shape[0] == cell.depth for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if "blocks" in jax.tree_util.keystr(path))
        tokens = jaxnorm.probe_tokens(cell.train, cell.probe)
        unpadded = jaxnorm.init(jaxnorm.resolve_config(cell.model, cell.train), jaxnorm.seed_keys(1)[0])
        np.testing.assert_allclose(jaxnorm.apply(graphdef, params, rest, tokens, train=False)[0],
                                   jaxnorm.apply(*unpadded, tokens, train=False)[0], rtol=1e-6, atol=1e-6)
