"""Bad input: every malformed flag, text file or run directory is refused the same way.

The real CLI, in subprocesses (run 4 at a time; each costs a Python + JAX import, nothing compiles):
exit status 2, exactly one line on stderr that names the problem, no traceback, and the file system
as it was. Plus the config dataclasses' field errors in-process. tests/test_sweep.py already covers a
handful of these flags in-process; this is the exhaustive real-process table.
"""

import concurrent.futures
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--depths", "2", "--blocks", "pre_ln", "--norms", "layernorm", "--attentions", "dot",
        "--optimizers", "adamw", "--clip", "none", "--seeds", "1", "--steps", "2", "--batch-size", "8",
        "--seq-len", "8", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--task", "reverse", "--no-progress"]


def _tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and '<dir>' for directories) under `path`."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


def _text_files(tmp: Path) -> dict[str, Path]:
    files = {"empty": tmp / "empty.txt", "binary": tmp / "binary.txt", "latin1": tmp / "latin1.txt",
             "short": tmp / "short.txt", "dir": tmp / "a_directory"}
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(b"hello world\n" * 50 + b"\x00\x01\x02" + b"more text\n" * 50)
    files["latin1"].write_bytes(("caf\xe9 na\xefve " * 100).encode("latin-1"))
    files["short"].write_bytes(b"tiny\n")
    files["dir"].mkdir()
    return files


def _cases(tmp: Path, fifo: Path) -> list[tuple[str, list[str], str]]:
    """(name, extra flags, keyword the one stderr line must contain). Later flags override TINY's."""
    f = _text_files(tmp)
    a_file = tmp / "i_am_a_file"
    a_file.write_text("not a run directory\n")
    lm = ["--task", "lm"]
    return [
        ("unknown block", ["--blocks", "pre_ln,nope"], "--blocks"),
        ("unknown norm", ["--norms", "layernorm,nrm"], "--norms"),
        ("unknown attention", ["--attentions", "softmax"], "--attentions"),
        ("unknown optimizer", ["--optimizers", "adamw,sgdd"], "--optimizers"),
        ("empty list item", ["--blocks", "pre_ln,"], "--blocks"),
        ("depth 0", ["--depths", "0"], "--depths"),
        ("depth -1", ["--depths", "2,-1"], "--depths"),
        ("non-integer depth", ["--depths", "1.5"], "--depths"),
        ("word depth", ["--depths", "two"], "--depths"),
        ("clip without value", ["--clip", "global_norm:"], "--clip"),
        ("clip non-number", ["--clip", "global_norm:abc"], "--clip"),
        ("clip unknown kind", ["--clip", "foo:1"], "--clip"),
        ("clip negative", ["--clip", "agc:-0.1"], "--clip"),
        ("negative lr", ["--lrs", "-1e-3"], "--lrs"),
        ("zero lr", ["--lrs", "0"], "--lrs"),
        ("nan lr", ["--lrs", "nan"], "--lrs"),
        ("inf lr", ["--lrs", "inf"], "--lrs"),
        ("word lr", ["--lrs", "fast"], "--lrs"),
        ("zero seeds", ["--seeds", "0"], "--seeds"),
        ("zero cpu devices", ["--cpu-devices", "0"], "--cpu-devices"),
        ("word cpu devices", ["--cpu-devices", "many"], "--cpu-devices"),
        ("negative steps", ["--steps", "-1"], "--steps"),
        ("zero batch", ["--batch-size", "0"], "--batch-size"),
        ("odd seq_len for reverse", ["--seq-len", "7"], "seq_len"),
        ("heads do not divide d_model", ["--heads", "3"], "num_heads"),
        ("zero d_model", ["--d-model", "0"], "--d-model"),
        ("unknown task", ["--task", "translate"], "--task"),
        ("shard out of range", ["--shard", "2/2"], "--shard"),
        ("shard of zero", ["--shard", "1/0"], "--shard"),
        ("shard not i/n", ["--shard", "x"], "--shard"),
        ("negative shard", ["--shard", "-1/2"], "--shard"),
        ("unknown preset", ["--preset", "huge"], "--preset"),
        ("unknown flag", ["--bogus"], "unrecognized"),
        ("abbreviated flag", ["--seed", "3"], "unrecognized"),
        ("flag without value", ["--lrs"], "--lrs"),
        ("causal batchnorm", [*lm, "--norms", "batchnorm"], "norm"),
        ("text file for synthetic task", ["--text-file", str(f["short"])], "text_file"),
        ("missing text file", [*lm, "--text-file", str(tmp / "nope.txt")], "does not exist"),
        ("empty text file", [*lm, "--text-file", str(f["empty"])], "empty"),
        ("binary text file", [*lm, "--text-file", str(f["binary"])], "binary"),
        ("invalid utf-8", [*lm, "--text-file", str(f["latin1"])], "UTF-8"),
        ("directory as text file", [*lm, "--text-file", str(f["dir"])], "directory"),
        ("too short text file", [*lm, "--text-file", str(f["short"])], "too short"),
        ("too short text file for mlm", ["--task", "mlm", "--text-file", str(f["short"])], "too short"),
        ("--out is a file", ["--out", str(a_file)], "--out"),
        ("--out under a file", ["--out", str(a_file / "run")], "--out"),
        ("--out holds another spec", ["--out", str(tmp / "other_run")], "different sweep"),
        # sizes beyond any sane limit, refused before JAX overflows, XLA aborts or a loop never ends
        ("huge depth", ["--depths", "99999999999999999999"], "--depths"),
        ("huge steps", ["--steps", "9223372036854775808"], "--steps"),
        ("huge batch", ["--batch-size", "1000000000000"], "--batch-size"),
        ("huge d_model", ["--d-model", "1000000000", "--heads", "1"], "--d-model"),
        ("huge heads", ["--heads", "100000"], "--heads"),
        ("huge seq_len", ["--seq-len", "100000000"], "--seq-len"),
        ("huge seeds", ["--seeds", "1000000000000"], "--seeds"),
        ("huge cpu devices", ["--cpu-devices", "100000"], "--cpu-devices"),
        ("cell larger than memory", ["--d-model", "16384", "--heads", "1", "--d-ff", "65536", "--depths", "512",
                                     "--batch-size", "4096", "--seq-len", "4096"], "memory"),
        ("lr zero in float32", ["--lrs", "1e-320"], "--lrs"),
        ("lr inf in float32", ["--lrs", "1e39"], "--lrs"),
        ("FIFO as text file", [*lm, "--text-file", str(fifo)], "not a regular file"),
        ("--out under /proc", ["--out", "/proc/jaxnorm-run"], "--out"),
        ("empty --out", ["--out", ""], "--out"),
    ]


def _other_run(path: Path) -> None:
    """A run directory made by a different spec (lr 5e-3): only its sweep.json, like a sweep just started."""
    from jaxnorm import rundir
    from jaxnorm.sweep_spec import expand, preset

    q = preset("quick")
    spec = q.replace(depths=(2,), blocks=("pre_ln",), lrs=(5e-3,), seeds=1,
                     model=q.model.replace(d_model=16, num_heads=2, d_ff=32),
                     train=q.train.replace(steps=2, batch_size=8, seq_len=8))
    (path / "cells").mkdir(parents=True)
    rundir.write_sweep_json(path, spec, [c.cell_id for c in expand(spec)])


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.depth_sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def fifo():
    """A named pipe, outside tmp_path (reading it there to compare trees would block)."""
    import os
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp())
    os.mkfifo(d / "pipe")
    yield d / "pipe"
    shutil.rmtree(d)


def test_malformed_input_exits_2_with_one_line_and_changes_nothing(tmp_path, fifo):
    _other_run(tmp_path / "other_run")
    cases = _cases(tmp_path, fifo)
    assert len(cases) >= 25
    argvs = []
    for i, (name, flags, _) in enumerate(cases):
        out = [] if "--out" in flags else ["--out", str(tmp_path / f"run{i}")]
        argvs.append([*TINY, *out, *flags])
    before = _tree(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(_run_cli, argvs))

    failures = []
    for (name, flags, keyword), argv, proc in zip(cases, argvs, procs):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit {proc.returncode}")
        if "Traceback" in proc.stderr:
            problems.append("traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        elif not lines[0].startswith("error: ") or keyword not in lines[0]:
            problems.append(f"message lacks {keyword!r}")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}\n    stderr: {proc.stderr.strip()[-600:]}")
    assert not failures, "\n".join(failures)
    # nothing was created, removed or modified anywhere (no run{i} dirs; other_run and the file byte-identical)
    assert _tree(tmp_path) == before


# --- the config dataclasses, in-process -----------------------------------------------------------------

@pytest.mark.parametrize("cls,field,value", [
    (ModelConfig, "depth", 0),
    (ModelConfig, "depth", 2.0),
    (ModelConfig, "depth", True),
    (ModelConfig, "d_model", -8),
    (ModelConfig, "block", "post-ln"),
    (ModelConfig, "norm", None),
    (ModelConfig, "norm_eps", 0.0),
    (ModelConfig, "norm_eps", math.nan),
    (ModelConfig, "causal", "yes"),
    (ModelConfig, "dtype", "float16"),
    (OptimConfig, "lr", math.nan),
    (OptimConfig, "lr", -1.0),
    (OptimConfig, "lr", "1e-3"),
    (OptimConfig, "b2", 1.5),
    (OptimConfig, "optimizer", "adamax"),
    (OptimConfig, "clip_value", 0),
    (OptimConfig, "warmup_steps", -1),
    (TrainConfig, "steps", -1),
    (TrainConfig, "batch_size", 0),
    (TrainConfig, "seq_len", 1),
    (TrainConfig, "divergence_factor", 1.0),
    (TrainConfig, "task", "LM"),
    (TrainConfig, "text_file", 3),
    (ProbeConfig, "probe_every", 0),
    (ProbeConfig, "jacobian", 1),
    (ProbeConfig, "power_iters", 2.5),
])
def test_config_field_errors_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field}: invalid value"):
        cls(**{field: value})


# --- the Python API: the same refusals as the command line, one line naming the field -------------------

def test_python_api_refuses_like_the_command_line(tmp_path):
    import jaxnorm
    from jaxnorm import results, sweep
    from jaxnorm.config import ConfigError
    from jaxnorm.trainer import train

    with pytest.raises(ConfigError, match=r"^train\.model_cfg: invalid value OptimConfig; allowed: a ModelConfig"):
        train(OptimConfig(), ModelConfig(), TrainConfig())
    with pytest.raises(ConfigError, match=r"^train\.train_cfg: invalid value NoneType"):
        train(ModelConfig(), OptimConfig(), None)
    with pytest.raises(ConfigError, match=r"^TrainConfig\.text_file: .*task lm"):
        TrainConfig(task="reverse", text_file=__file__)
    with pytest.raises(ConfigError, match=r"^TrainConfig\.steps: invalid value 9223372036854775808"):
        TrainConfig(steps=2**63)
    with pytest.raises(ConfigError, match=r"^OptimConfig\.lr: invalid value 1e-320"):
        OptimConfig(lr=1e-320)
    with pytest.raises(ConfigError, match=r"^spec: invalid value NoneType"):
        sweep.run(None, tmp_path / "run")
    with pytest.raises(results.NotARunDir, match="not a run directory"):
        jaxnorm.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"^out \(--out\): '' is empty"):
        sweep.validate(sweep.preset("quick"), "")
    assert not (tmp_path / "run").exists()


def test_read_only_out_is_refused(tmp_path):
    import os
    from jaxnorm import rundir
    from jaxnorm.config import ConfigError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK) and os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        with pytest.raises(ConfigError, match=r"^out \(--out\): .*is not writable"):
            rundir.check_out_dir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_grid_values_equal_after_normalisation_are_merged():
    from experiments import depth_sweep
    args = depth_sweep.build_parser().parse_args([*TINY, "--clip", "global_norm:1,global_norm:1.0,none",
                                                  "--lrs", "1e-3,0.001", "--depths", "2,02"])
    spec = depth_sweep.build_spec(args)
    assert spec.clips == ("global_norm:1", "none") and spec.lrs == (1e-3,) and spec.depths == (2,)
    assert spec.num_cells == 2
