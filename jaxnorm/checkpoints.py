"""Each seed's trained parameters in its cell's directory (orbax), and `load_params` to get a model back.

```
<out>/cells/<cell_id>/checkpoints/meta.json            what was saved: which, seeds
<out>/cells/<cell_id>/checkpoints/final/seed<s>/...     params, rest (non-parameter state), opt_state
<out>/cells/<cell_id>/checkpoints/init/seed<s>/...      params at step 0 (`--save-params init+final`)
```
`s` is the seed's number (results.csv's `seed`). Every leaf is stored under its path name
(`encoder/blocks/attn/query/kernel`), so a checkpoint does not depend on how NNX or optax nest their state.

Atomic: the whole `checkpoints/` folder is written under a temporary name, fsynced and renamed into place,
before summary.json; summary.json's manifest lists the size and sha256 of every file in it
(`jaxnorm.integrity`), a resume checks them, and `load_params` reads only files whose hash matches. So a
killed run leaves either no `checkpoints/` folder or one that is not the cell's (no summary.json lists it, so
nothing loads it and the resume replaces it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxnorm import integrity
from jaxnorm.config import ModelConfig, OptimConfig, TrainConfig, from_dict, task_model_config

SAVE_PARAMS = ("none", "final", "init+final")
WHICH = ("final", "init")
FOLDER = "checkpoints"
PARTIAL_SUFFIX = ".partial"  # a folder being written; not `.tmp`, which rundir.remove_dead_temps unlinks as a file


class NoCheckpoint(ValueError):
    """The cell has no saved parameters of that kind for that seed; the message is one line."""


def check_save_params(value: Any) -> str:
    if value not in SAVE_PARAMS:
        raise ValueError(f"save_params (--save-params): invalid value {value!r}; allowed: {', '.join(SAVE_PARAMS)}")
    return value


# --- writing ------------------------------------------------------------------------------------------

def _flat(tree: Any) -> dict[str, np.ndarray]:
    """Leaf path name -> host array (a Variable's `.value` dropped from the path, as `jaxnorm.paths` does)."""
    import jax

    from jaxnorm.paths import path_string

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat = {path_string(path) or "_": np.asarray(leaf) for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("checkpoint: two leaves share a path name; allowed: a tree whose paths are distinct")
    return flat


def _seed_slice(tree: Any, s: int) -> Any:
    import jax

    return jax.tree.map(lambda a: np.asarray(a)[s], tree)


def _checkpointer():
    """A one-process orbax checkpointer: under jax.distributed each process saves its own cells, so none may
    wait for the others at orbax's barriers."""
    import jax
    import orbax.checkpoint as ocp

    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale(cell_dir: Path) -> None:
    """Delete what an earlier, unfinished run of this cell left: `checkpoints/` (no summary.json listed it) and
    partial folders. The caller holds the cell's lock and is about to (re)write the cell."""
    shutil.rmtree(cell_dir / FOLDER, ignore_errors=True)
    for partial in cell_dir.glob(f".{FOLDER}.*{PARTIAL_SUFFIX}"):
        shutil.rmtree(partial, ignore_errors=True)


def save(cell_dir: Path, history: Any, save_params: str) -> list[str]:
    """Write the seeds' checkpoints of a trained cell (see the module docstring); returns the files written,
    relative to `cell_dir`, for summary.json's manifest. A History holds the unpadded model's state even when
    the run was padded (jaxnorm.padding), so a checkpoint always fits the cell's own config."""
    check_save_params(save_params)
    cell_dir = Path(cell_dir)
    remove_stale(cell_dir)
    if save_params == "none":
        return []
    which = ["final"] + (["init"] if save_params == "init+final" else [])
    if "init" in which and history.init_params is None:
        raise ValueError("save_params (--save-params): init+final needs the run's initial parameters; "
                         "allowed: train(..., keep_init=True)")
    partial = Path(tempfile.mkdtemp(dir=cell_dir, prefix=f".{FOLDER}.{os.getpid()}.", suffix=PARTIAL_SUFFIX))
    try:
        checkpointer = _checkpointer()
        try:
            for s, seed in enumerate(history.seeds):
                trees = {"final": {"params": history.params, "rest": history.rest, "opt_state": history.opt_state},
                         "init": {"params": history.init_params}}
                for kind in which:
                    content = {k: _flat(_seed_slice(v, s)) for k, v in trees[kind].items()}
                    checkpointer.save(partial / kind / f"seed{seed}", content)
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        meta = {"format_version": 1, "which": which, "seeds": list(history.seeds)}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        _fsync_tree(partial)
        os.replace(partial, cell_dir / FOLDER)
        _fsync_dir(cell_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return sorted(str(p.relative_to(cell_dir)) for p in (cell_dir / FOLDER).rglob("*") if p.is_file())


# --- reading ------------------------------------------------------------------------------------------

def _cell(run_dir: str | Path, cell_id: str) -> tuple[Path, dict[str, Any]]:
    from jaxnorm.results import check_run_dir

    path = check_run_dir(run_dir) / "cells" / integrity.check_cell_id(cell_id)
    return path, integrity.read_summary(path)


def _verified_files(path: Path, summary: dict[str, Any], prefix: str) -> list[str]:
    """The manifest's files under `prefix`, each checked against its size and sha256 (DamagedCell if not)."""
    names = [n for n in integrity.listed_files(summary) if n.startswith(prefix)]
    for name in names:
        integrity.read_checked(path, summary, name)
    return names


def _meta(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    name = f"{FOLDER}/meta.json"
    if name not in integrity.listed_files(summary):
        raise NoCheckpoint(f"cell {summary['cell_id']}: no saved parameters (the sweep ran with --save-params "
                           f"none); allowed: a cell of a sweep run with --save-params {' or '.join(SAVE_PARAMS[1:])}")
    return json.loads(integrity.read_checked(path, summary, name))


def _restore(path: Path, summary: dict[str, Any], which: str, seed: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta.json, {"params": flat, ...}) of one saved seed, after checking every file's hash."""
    if which not in WHICH:
        raise ValueError(f"which: invalid value {which!r}; allowed: {', '.join(WHICH)}")
    meta = _meta(path, summary)
    if which not in meta["which"] or seed not in meta["seeds"]:
        raise NoCheckpoint(f"cell {summary['cell_id']}: no saved {which!r} parameters for seed {seed!r}; allowed: "
                           f"which in {', '.join(meta['which'])}, seed in {', '.join(map(str, meta['seeds']))}")
    folder = f"{FOLDER}/{which}/seed{seed}/"
    _verified_files(path, summary, folder)
    checkpointer = _checkpointer()
    try:
        return meta, checkpointer.restore(path / folder)
    finally:
        checkpointer.close()


def _fill(abstract: Any, flat: dict[str, np.ndarray], what: str) -> Any:
    """`abstract`'s structure with the saved arrays, matched by path name and checked for shape and dtype."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.paths import path_string

    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [path_string(p) or "_" for p, _ in paths_leaves]
    if sorted(names) != sorted(flat):
        missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
        raise ValueError(f"checkpoint {what}: does not fit the cell's model (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}); allowed: a checkpoint written for this cell's config.json")
    leaves = []
    for name, (_, leaf) in zip(names, paths_leaves):
        value = np.asarray(flat[name])
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise ValueError(f"checkpoint {what}: {name} is {value.dtype}{list(value.shape)}, the model wants "
                             f"{leaf.dtype}{list(leaf.shape)}")
        leaves.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def cell_model_config(run_dir: str | Path, cell_id: str) -> ModelConfig:
    """The model config a cell trained: its config.json's model for its task (`config.task_model_config`), with
    the vocabulary the run used (summary.json's resolved config; a text corpus's is known only once read)."""
    path, summary = _cell(run_dir, cell_id)
    config = json.loads(integrity.read_checked(path, summary, "config.json"))
    vocab = summary["resolved"]["model"]["vocab_size"]
    return task_model_config(from_dict(ModelConfig, config["model"]), from_dict(TrainConfig, config["train"]), vocab)


def _abstract_model(cfg: ModelConfig):
    from flax import nnx

    from jaxnorm.model import Model

    return nnx.split(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)


def load_params(run_dir: str | Path, cell_id: str, seed: int, which: str = "final") -> tuple[Any, Any, Any]:
    """(graphdef, params, rest) of seed `seed` of a cell saved with `--save-params`: the functional core that
    `jaxnorm.apply(graphdef, params, rest, tokens, train=False)`, `jaxnorm.maps` and `jax.jacfwd` take;
    `flax.nnx.merge(graphdef, params, rest)` makes the nnx `jaxnorm.Model`. Built from the cell's
    config.json; `which="final"`: the parameters after the last step, `"init"`: at step 0 (its `rest`, the
    non-parameter state at initialisation, is rebuilt from the seed's init key, `jaxnorm.seed_keys`).
    A cell that trained padded to a larger depth (`jaxnorm.padding`) comes back at its own depth. NoCheckpoint if nothing of that kind was saved; DamagedCell (one line) if a file
    is missing or its hash differs from the one written."""
    path, summary = _cell(run_dir, cell_id)
    meta, saved = _restore(path, summary, which, seed)
    cfg = cell_model_config(run_dir, cell_id)
    graphdef, abstract_params, abstract_rest = _abstract_model(cfg)
    params = _fill(abstract_params, saved["params"], "params")
    if which == "final":
        return graphdef, params, _fill(abstract_rest, saved.get("rest", {}), "rest")
    from jaxnorm.model import init
    from jaxnorm.run_inputs import seed_keys

    return graphdef, params, init(cfg, seed_keys(seed)[0])[2]


def load_opt_state(run_dir: str | Path, cell_id: str, seed: int) -> Any:
    """The optax state of seed `seed` after the cell's last step (saved with `--save-params final` or
    `init+final`), in the structure `jaxnorm.optim.make_optimizer` gives it."""
    import jax

    from jaxnorm import optim

    path, summary = _cell(run_dir, cell_id)
    meta, saved = _restore(path, summary, "final", seed)
    config = summary["resolved"]
    _, abstract_params, _ = _abstract_model(cell_model_config(run_dir, cell_id))
    tx = optim.make_optimizer(from_dict(OptimConfig, config["optim"]), max(config["train"]["steps"], 1))
    abstract = jax.eval_shape(lambda p: optim.init_state(tx, p, 1.0, 0.0), abstract_params)
    return _fill(abstract, saved["opt_state"], "opt_state")
