"""Compiling the next model structure while the current one trains (jaxnorm.compile_ahead): each structure is
compiled once, ahead of its first pack, on the background thread; what it compiles is exactly what the run
then calls (the run compiles nothing, and its results are those of a run that compiled in turn)."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from jaxnorm import programs, sweep
from jaxnorm import trainer as train_lib
from jaxnorm.compile_ahead import THREAD_NAME, CompileAhead
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
M = ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16)
T = TrainConfig(task="reverse", steps=6, batch_size=4, seq_len=8, num_symbols=6, log_every=3, eval_every=3,
                progress=False)
P = ProbeConfig(probe_every=3, power_iters=3, hutchinson_samples=1, probe_batch=1)


def test_each_structure_is_compiled_once_ahead_on_the_background_thread():
    packs = ["a2", "a8", "b2", "b8", "c2", "a24"]  # structure = first letter; "a" runs first, in turn
    compiled: list[tuple[str, str]] = []

    def compile_pack(pack: str) -> None:
        time.sleep(0.05)
        compiled.append((pack, threading.current_thread().name))

    with CompileAhead(packs, key=lambda p: p[0], compile_pack=compile_pack) as ahead:
        started = []
        for i in range(len(packs)):
            ahead.before(i)
            started.append([p for p, _ in compiled])  # what had been compiled when pack i started
    assert [p for p, _ in compiled] == ["b2", "c2"]
    assert all(name.startswith(THREAD_NAME) for _, name in compiled)
    assert "b2" in started[2] and "c2" in started[4]  # a structure's first pack waited for its compile


def test_programs_compiled_ahead_survive_until_their_first_use():
    """The worst order of events: the structure after next is added to jaxnorm.programs' bounded cache
    (compiled ahead) before the next one's programs, compiled ahead too, are first used. They must still
    be there, not dropped as least recently used and compiled again."""
    programs.clear()
    builds: collections.Counter = collections.Counter()
    added = {k: threading.Event() for k in "abc"}

    def programs_of(structure: str) -> object:  # what a pack's run and its compile-ahead both look up
        def build() -> object:
            builds[structure] += 1
            return object()
        return programs.cached("train", ("test", structure), "chunk", build)

    def compile_pack(pack: str) -> None:
        programs_of(pack[0])
        added[pack[0]].set()

    packs = ["a2", "a3", "b2", "b3", "c2", "c3"]
    with CompileAhead(packs, key=lambda p: p[0], compile_pack=compile_pack) as ahead:
        for i, pack in enumerate(packs):
            ahead.before(i)
            after = next((p[0] for p in packs[i + 1:] if p[0] != pack[0]), None)
            if after is not None and (i == 0 or packs[i - 1][0] != pack[0]):
                assert added[after].wait(10)  # the next structure arrives before this pack runs
            programs_of(pack[0])
    programs.clear()
    assert builds == {"a": 1, "b": 1, "c": 1}


def test_disabled_or_single_structure_compiles_nothing_ahead():
    calls: list[str] = []
    for packs, enabled in ((["a2", "b2"], False), (["a2", "a8"], True)):
        with CompileAhead(packs, key=lambda p: p[0], compile_pack=calls.append, enabled=enabled) as ahead:
            for i in range(len(packs)):
                ahead.before(i)
    assert calls == []


def test_a_failed_compile_ahead_leaves_the_pack_to_compile_in_turn(tmp_path, monkeypatch):
    attempts = []

    def fail(pack, pad_to):
        attempts.append(pack[0].model.block)
        raise RuntimeError("compile failed")

    monkeypatch.setattr(sweep, "compile_pack_ahead", fail)
    spec = sweep.SweepSpec(depths=(2,), blocks=("pre_ln", "post_ln"), norms=("layernorm",), attentions=("dot",),
                           optimizers=("adamw",), clips=("none",), lrs=(3e-3,), seeds=1, model=M, train=T,
                           probe=P.replace(jacobian=False))
    df = sweep.run(spec, tmp_path / "run", progress=False)
    # The second structure's compile ahead raised: it compiled in turn, and trained.
    assert attempts == ["post_ln"]
    assert re.search(r"compiling \d+ s \(6 programs[;)]", df.attrs["time"]), df.attrs["time"]
    assert len(df) == 2 and df["final_loss"].notna().all()


def test_run_compiles_nothing_after_compiling_ahead_and_gets_the_same_results():
    members = [(OptimConfig(lr=3e-3), T.replace(seeds=2)), (OptimConfig(lr=1e-2), T.replace(seed=5))]
    programs.clear()
    ref = train_lib.train_pack(M.replace(depth=3), members, P, pad_to=3)
    programs.clear()
    ahead = programs.start_compile_log()
    train_lib.compile_pack_ahead(M.replace(depth=3), members, P, pad_to=3)
    assert ahead.programs == 4  # init, chunk, eval, Jacobian probes
    log = programs.start_compile_log()
    got = train_lib.train_pack(M.replace(depth=3), members, P, pad_to=3)
    assert log.programs == 0
    for g, r in zip(got, ref):
        for k in r.metrics:
            np.testing.assert_array_equal(g.metrics[k], r.metrics[k])
        for k in r.jacobian:
            np.testing.assert_array_equal(g.jacobian[k], r.jacobian[k])
        np.testing.assert_array_equal(g.eval_loss, r.eval_loss)


SHARDED = """
import jax
jax.config.update("jax_num_cpu_devices", 2)
from jaxnorm import programs, trainer
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
m = ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16)
t = TrainConfig(task="reverse", steps=4, batch_size=4, seq_len=8, num_symbols=6, log_every=2, eval_every=2,
                progress=False, seeds=2)
p = ProbeConfig(probe_every=2, power_iters=2, hutchinson_samples=1, probe_batch=1)
trainer.compile_pack_ahead(m, [(OptimConfig(), t)], p, pad_to=3)
log = programs.start_compile_log()
trainer.train_pack(m, [(OptimConfig(), t)], p, pad_to=3)
print("compiled in the run:", log.programs)
"""


def test_compile_ahead_matches_the_seeds_split_over_cpu_devices():
    env = dict(os.environ, JAXNORM_XLA_CACHE="")
    proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled in the run: 0" in proc.stdout


def test_sweep_compiles_later_structures_ahead(tmp_path):
    spec = sweep.SweepSpec(depths=(2, 3), blocks=("pre_ln", "post_ln"), norms=("layernorm",), attentions=("dot",),
                           optimizers=("adamw",), clips=("none",), lrs=(3e-3,), seeds=1, model=M, train=T,
                           probe=P.replace(jacobian=False))
    df = sweep.run(spec, tmp_path / "run", progress=False)
    line = df.attrs["time"]
    # Two structures × init, chunk, eval: the first compiled in turn, the second ahead, nothing twice. (The
    # order of events that would push programs out before their first use is forced in
    # test_programs_compiled_ahead_survive_until_their_first_use.)
    assert re.search(r"compiling \d+ s \(6 programs, 3 of them compiled ahead while cells trained", line), line
    assert len(df) == 4 and df["final_loss"].notna().all()
