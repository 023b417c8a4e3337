"""The benchmark scripts run end to end with --tiny and print their table headers.

No timing is asserted here: speed claims live in the scripts, as ratios measured side by side in one run.
The smoke runs are started together (each is a separate process, mostly XLA compiling), so the module costs
about the slowest of them. scripts/bench.py's smoke run of every section repeats the other scripts' work, so
it is marked slow; its PyTorch and end-to-end sections are checked on their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
# The scripts import this checkout's package, whichever copy of jaxnorm is installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}

HEADERS = {
    "bench_compile.py": ["# compile time vs depth", "| depth | chunk lower s |",
                         "# programs of one `--preset init` block", "| program | lower s |"],
    "bench_probes.py": ["# probe overhead", "| depth | probes | time ms |"],
    "bench_jacobian_loops.py": ["# Jacobian probes' loops", "| depth | program | end-to-end unroll |"],
    "spectral_accuracy.py": ["# spectral-norm estimators vs dense Jacobians", "| depth | trained steps | method |"],
    "profile_step.py": ["# where the time goes", "| op kind | 1 seed: ms/chunk |", "## One Jacobian probe call",
                        "## Optimised HLO"],
    "project_grid.py": ["# `quick` projected from 1 of its 3 model structures at 20 of its 600 steps (tiny)",
                        "| structure | cells | compiling s |", "Projected for all 3 structures (6 cells)"],
    "torch_reference.py": ['"results"'],
    "bench.py": ["# jaxnorm benchmark", "## Train step", "| block | depth | jaxnorm ms/step |",
                 "## FLOP/s vs matmul peaks", "| matmul dtype |", "| bfloat16 |", "## Compile time vs depth",
                 "## Seeds", "## Probe overhead", "## End to end"],
}


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), "--tiny", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory every xdist worker of this test run sees (the workers' base temp dirs share a parent)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "bench-smoke"  # the numbered base dir is new for each test run
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def profile_dir(shared_dir) -> Path:
    return shared_dir / "profile"


@pytest.fixture(scope="session")
def smoke_runs(shared_dir, profile_dir) -> dict[str, tuple[int, str, str]]:
    """The JAX scripts' smoke runs start together, once per test run: their tests share an `xdist_group`, but
    the scheduler may still hand some of them to another worker, which then waits for the first worker's
    runs (a lock) and reads their saved results instead of running them again."""
    import fcntl

    results = shared_dir / "results.json"
    with open(shared_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not results.exists():
            procs = {name: _start(name) for name in ("bench_compile.py", "bench_probes.py",
                                                     "spectral_accuracy.py", "bench_jacobian_loops.py")}
            procs["profile_step.py"] = _start("profile_step.py", "--hlo-dir", str(profile_dir / "hlo"),
                                              "--out", str(profile_dir / "profile.md"))
            procs["project_grid.py"] = _start("project_grid.py", "--preset", "quick", "--structures", "1",
                                              "--steps", "20")
            runs = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
            results.write_text(json.dumps(runs))
    return {name: tuple(run) for name, run in json.loads(results.read_text()).items()}


@pytest.mark.xdist_group("bench-smoke-runs")
@pytest.mark.parametrize("script", ["bench_compile.py", "bench_probes.py", "profile_step.py", "spectral_accuracy.py",
                                    "bench_jacobian_loops.py", "project_grid.py"])
def test_jax_bench_script_smoke(smoke_runs, script):
    rc, out, err = smoke_runs[script]
    assert rc == 0, err[-2000:]
    for header in HEADERS[script]:
        assert header in out


@pytest.mark.xdist_group("bench-smoke-runs")
def test_projection_is_the_sampled_structures_mean_times_their_number(smoke_runs):
    """The projected total is 3 structures × the sampled one's compiling + running + writing + what the full
    loops add (each printed to 0.1 s; the mean over several samples: the test below)."""
    rc, out, err = smoke_runs["project_grid.py"]
    assert rc == 0, err[-2000:]
    rows = [[float(v) for v in line.split("|")[3:7]] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| structure")]
    assert len(rows) == 1 and all(v >= 0 for v in rows[0]) and rows[0][3] > 0
    expected = 3 * sum(rows[0])
    total = re.search(r"\*\*([\d.]+) (s|min|h|days)\*\*", out)
    seconds = float(total.group(1)) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[total.group(2)]
    assert seconds == pytest.approx(expected, rel=0.01, abs=1.0)


def test_project_grid_picks_whole_structures_and_scales_only_the_loops():
    project_grid = _script_module("project_grid")
    from jaxnorm.sweep_spec import expand, preset

    spec = preset("quick")
    groups = project_grid.structures(expand(spec))
    assert [{c.block for c in g} for g in groups] == [{"post_ln"}, {"pre_ln"}, {"rezero"}]
    assert all(sorted(c.depth for c in g) == [2, 8, 24] for g in groups)
    narrowed = project_grid.structure_spec(spec, groups[2])
    assert [c.cell_id for c in expand(narrowed)] == [c.cell_id for c in groups[2]]
    assert project_grid.spread(56, 2) == [0, 28] and project_grid.spread(3, 5) == [0, 1, 2]
    # a pack of 2 cells × 3 seeds (6 runs) whose loop after a first chunk of 10 steps took 4 s over 90 steps:
    # at 1010 steps it runs 1000 steps after that chunk, 1000/90 times as long, so the pack adds
    # 4 s × (1000/90 − 1), half of it from each cell
    pack = [{"timing": {"run_s": 4.0, "runs_packed": 6.0}}] * 2
    assert project_grid.loop_extra(pack, 3, 100, 1010, 10) == pytest.approx(4.0 * (1000 / 90 - 1))
    whole = project_grid.project([{"compiling": 10.0, "running": 5.0, "writing": 1.0, "extra": 40.0},
                                  {"compiling": 20.0, "running": 7.0, "writing": 1.0, "extra": 60.0}], 10)
    assert whole == {"compiling": 150.0, "running": 560.0, "writing": 10.0, "total": 720.0}
    # a sample no longer than the first chunk has no loop to scale: refused in one line, before anything runs
    proc = _run("project_grid.py", "--preset", "quick", "--steps", "10")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --steps: invalid value 10; allowed: more than the `quick` preset's first chunk (10 steps, its "
        "log_every) and fewer than its 600 steps"]


@pytest.mark.xdist_group("bench-smoke-runs")
def test_init_cell_table_times_every_program(smoke_runs):
    """The init-cell table has one row per program a steps = 0 cell compiles, each a real (non-zero) compile."""
    rc, out, err = smoke_runs["bench_compile.py"]
    assert rc == 0, err[-2000:]
    table = out.split("# programs of one `--preset init` block")[1]
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:5]]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| program")}
    assert list(rows) == ["init", "measure (the chunk's probed step, update off)", "eval", "jacobian probes",
                          "**all**"]
    for lower_s, compile_s, total_s in rows.values():
        assert lower_s > 0 and compile_s > 0 and abs(lower_s + compile_s - total_s) < 0.02
    assert abs(sum(r[2] for name, r in rows.items() if name != "**all**") - rows["**all**"][2]) < 0.05


@pytest.mark.xdist_group("bench-smoke-runs")
def test_jacobian_loop_variants_are_all_timed(smoke_runs):
    """Every variant the smoke run compiles is timed against the reference (unroll 1, XLA's defaults): this
    XLA accepts the GPU command-buffer options on a CPU too (where they change nothing), so none is rejected."""
    rc, out, err = smoke_runs["bench_jacobian_loops.py"]
    assert rc == 0, err[-2000:]
    rows = {tuple(c.strip() for c in line.split("|")[2:5]): [float(v) for v in line.split("|")[5:9]]
            for line in out.splitlines() if re.match(r"\| \d", line)}
    chunk, chunk_captured = ("chunk of 4", "—", "XLA default"), ("chunk of 4", "—", "loops captured")
    jac, jac_variant = ("jacobian call", "1", "XLA default"), ("jacobian call", "4", "loops captured")
    assert list(rows) == [chunk, chunk_captured, jac, jac_variant]
    assert all(time_ms > 0 and compile_s > 0 for time_ms, _, compile_s, _ in rows.values())
    # The ratio columns follow from the printed times (to their rounding): a variant against its program's
    # reference row, and a call in bare steps of the default chunk (4 steps).
    def close(a, b):
        return abs(a - b) <= 0.02 * b + 0.01
    assert close(rows[jac_variant][1], rows[jac_variant][0] / rows[jac][0])
    assert close(rows[chunk_captured][1], rows[chunk_captured][0] / rows[chunk][0])
    assert close(rows[jac_variant][3], rows[jac_variant][0] / (rows[chunk][0] / 4))
    assert close(rows[chunk_captured][3], rows[chunk_captured][0] / rows[chunk][0])


@pytest.mark.xdist_group("bench-smoke-runs")
def test_spectral_accuracy_rows_are_measured(smoke_runs):
    """Each estimator's errors come from a dense SVD: both approach σ₁ from below (errors ≥ −rounding) and,
    at the same number of products JᵀJv, Lanczos is at least as close as power iteration."""
    rc, out, err = smoke_runs["spectral_accuracy.py"]
    assert rc == 0, err[-2000:]
    rows = {line.split("|")[3].strip(): [float(v) for v in line.split("|")[5:8]]
            for line in out.splitlines() if re.match(r"\| \d", line)}
    assert set(rows) == {"power", "lanczos"}
    assert all(e > -1e-5 for errs in rows.values() for e in errs)
    assert all(lz <= pw + 1e-6 for lz, pw in zip(rows["lanczos"], rows["power"]))
    assert rows["power"][0] > 1e-4  # the tiny model is not trivially converged: the check above can fail


@pytest.mark.xdist_group("bench-smoke-runs")
def test_profile_finds_the_kernels_it_reports(smoke_runs, profile_dir):
    """The profile's totals come from real kernel events: non-zero times and counts, the vmapped chunk's
    optimised HLO has only batched dots (seeds are a batch dimension), and --out holds what was printed."""
    rc, out, err = smoke_runs["profile_step.py"]
    assert rc == 0, err[-2000:]
    totals = [line.split("|") for line in out.splitlines() if line.startswith("| **all kernels** |")]
    assert len(totals) == 2  # the seeds table and the Jacobian table
    seeds_row, jac_row = totals
    assert float(seeds_row[2]) > 0 and float(seeds_row[3]) > 0 and float(seeds_row[4]) > 0
    assert float(jac_row[2]) > 0 and float(jac_row[3]) > 0
    (n_one, batched_one), (n_two, batched_two) = [
        (int(m[1]), int(m[2])) for m in re.finditer(r"- chunk-\S+: (\d+) dot instructions, (\d+) with batch", out)]
    assert n_one == n_two > batched_one and batched_two == n_two
    assert (profile_dir / "hlo" / "chunk-2-seeds.hlo.txt").read_text().count(" dot(") >= n_two
    assert (profile_dir / "profile.md").read_text().strip() in out


def test_kernel_time_by_kind_on_a_hand_made_trace():
    from jaxnorm.benchmarking.trace_kernels import kernel_events, kernel_time_by_kind, op_kind

    def x(name, dur, **args):
        return {"ph": "X", "name": name, "dur": dur, "args": args}

    trace = {"traceEvents": [
        {"ph": "M", "name": "process_name", "args": {"name": "/host:CPU"}},
        x("dot.1", 300.0, hlo_op="dot.1"), x("dot.7", 100.0, hlo_op="dot.7"),
        x("ynn_fusion.3", 50.0, hlo_op="ynn_fusion.3"), x("copy", 10.0, hlo_op="copy"),
        x("while.2", 9000.0, hlo_op="while.2"),               # spans the kernels above: not counted
        x("end: dot.1", 1.0), x("$api.py:1 block_until_ready", 5000.0),  # no HLO op: not a kernel
        {"ph": "i", "name": "dot.9", "args": {"hlo_op": "dot.9"}},  # an instant event, not a span
    ]}
    assert op_kind("dot.3.1") == "dot" and op_kind("bitcast_dynamic-update-slice_fusion.12") == \
        "bitcast_dynamic-update-slice_fusion" and op_kind("wrapped_broadcast") == "wrapped_broadcast"
    got = kernel_time_by_kind(kernel_events(trace), calls=2)
    # by hand: dot (300 + 100) µs / 2 calls = 0.2 ms in 1 kernel per call; ynn_fusion 0.025 ms; copy 0.005 ms
    assert got == {"dot": (0.2, 1.0), "ynn_fusion": (0.025, 0.5), "copy": (0.005, 0.5)}
    assert list(got) == ["dot", "ynn_fusion", "copy"]  # largest time first


def _run(script: str, *args: str, timeout: int = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _script_module(name: str):
    """scripts/<name>.py imported as a module (its functions, without running main)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(out: str, title: str) -> list[list[str]]:
    """The cells of the first markdown table after the heading that starts with `title` (header row first)."""
    section = out.split(title, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows


def test_torch_reference_smoke():
    pytest.importorskip("torch", reason="torch is the optional [bench] extra")
    proc = _run("torch_reference.py", "--tiny", "--threads", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"results"' in proc.stdout and '"optimizer"' in proc.stdout


def test_torch_reference_defaults_are_the_quick_preset():
    """The PyTorch reference trains what `python -m experiments.depth_sweep` trains by default: its model, task,
    optimizer and schedule flags and its grid default to the quick preset's values."""
    pytest.importorskip("torch", reason="torch is the optional [bench] extra")
    from jaxnorm.sweep_spec import preset

    code = ("import json, torch_train_grid as g; "
            "print(json.dumps(vars(g.build_parser().parse_args([]))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    q = preset("quick")
    want = {"blocks": ",".join(q.blocks), "depths": list(q.depths), "seeds": q.seeds, "d_model": q.model.d_model,
            "heads": q.model.num_heads, "d_ff": q.model.d_ff, "seq_len": q.train.seq_len,
            "batch": q.train.batch_size, "num_symbols": q.train.num_symbols, "lr": q.lrs[0],
            "weight_decay": q.optim.weight_decay, "warmup": q.optim.warmup_steps, "total_steps": q.train.steps,
            "log_every": q.train.log_every, "eval_every": q.train.eval_every, "eval_batches": q.train.eval_batches}
    assert {k: got[k] for k in want} == want
    assert (q.model.activation, q.model.norm, q.model.attention, q.model.positions, q.optim.optimizer,
            q.optim.schedule, q.optim.clip, q.train.task) == ("relu", "layernorm", "dot", "learned", "adamw",
                                                              "warmup_cosine", "none", "reverse")


def test_bench_train_and_end_to_end_tables_are_complete():
    """bench.py's train section with the PyTorch reference interleaved, and its end-to-end section on a reduced
    grid (one block, depth 2, one seed, 4 steps, at the smoke width): every row present, every number parses."""
    pytest.importorskip("torch", reason="torch is the optional [bench] extra: without it the PyTorch rows "
                                        "read 'not run'")
    proc = _run("bench.py", "--tiny", "--sections", "train,e2e", "--torch-variants", "eager",
                "--e2e-depths", "2", "--e2e-steps", "4", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"Matmul peak, float32: measured [\d.]+ GFLOP/s \(jnp.dot, 256²\); published "
                     r"([\d.]+ GFLOP/s, derived|unknown)", proc.stdout)
    train = _table(proc.stdout, "## Train step")
    assert train[0][-3:] == ["torch eager ms/step", "torch eager / jaxnorm", "torch threads (eager)"]
    assert [r[:2] for r in train[1:]] == [["pre_ln", "2"], ["post_ln", "2"]]
    for row in train[1:]:
        assert len(row) == len(train[0])
        numbers = [float(c) for c in row[2:] if c != "—"]
        assert len(numbers) == len(row) - 2 - (row[7] == "—")  # only the published peak may be unknown
        jax_ms, torch_ms, ratio = float(row[2]), float(row[-3]), float(row[-2])
        assert jax_ms > 0 and torch_ms > 0 and ratio == pytest.approx(torch_ms / jax_ms, rel=0.02, abs=0.01)
        assert int(row[-1]) >= 1  # the intra-op threads chosen for that model
    e2e = _table(proc.stdout, "## End to end")
    assert e2e[0] == ["run", "wall s", "PyTorch / this"] and len(e2e) == 4
    assert e2e[1][0].startswith("PyTorch") and "cold" in e2e[2][0] and "warm" in e2e[3][0]
    walls = [float(r[1]) for r in e2e[1:]]
    assert min(walls) > 0 and [float(r[2]) for r in e2e[1:]] == pytest.approx(
        [walls[0] / w for w in walls], rel=0.02, abs=0.01)
    losses = _table(proc.stdout, "Final held-out loss")
    assert losses[1][:2] == ["pre_ln", "2"] and all(float(c) > 0 for c in losses[1][2:]) and len(losses) == 2
    assert "reduced by --e2e-depths, --e2e-steps" in proc.stdout


@pytest.mark.slow
def test_bench_smoke_writes_nothing(tmp_path):
    """Every section, torch.compile included: its columns hold numbers, or the output says why it did not run."""
    out = tmp_path / "results.md"
    proc = _run("bench.py", "--tiny", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in HEADERS["bench.py"]:
        assert header in proc.stdout
    if "PyTorch reference: not run" not in proc.stdout:
        train = _table(proc.stdout, "## Train step")
        compiled = [row[-3:-1] for row in train[1:]]
        assert all(c != ["—", "—"] for c in compiled) or "torch.compile (not run: " in proc.stdout
    assert not out.exists()  # --tiny never writes results


def test_model_flops_match_xla_count_of_the_forward_pass():
    """bench.model_flops (MFU's model FLOPs) against an independent count: XLA:CPU's cost_analysis of the
    unrolled forward pass, which counts every dot it compiles. A third of the train-step model FLOPs is the
    forward's matmuls; XLA's count adds only the elementwise work (softmax, norms, ReLU), a few percent here."""
    import jax
    import jax.numpy as jnp

    from jaxnorm import ModelConfig, TrainConfig
    from jaxnorm import model as model_lib
    from jaxnorm.benchmarking.flops import model_flops
    from jaxnorm.data import make_dataset
    from jaxnorm.trainer import resolve_config

    t = TrainConfig(task="reverse", seq_len=32, batch_size=4, num_symbols=16)
    m = resolve_config(ModelConfig(depth=3, d_model=64, num_heads=4, d_ff=256, scan=False), t, make_dataset(t))
    graphdef, params, rest = model_lib.init(m, jax.random.key(0))
    forward = jax.jit(lambda p, r, x: model_lib.apply(graphdef, p, r, x, train=False)[0])
    cost = forward.lower(params, rest, jnp.zeros((t.batch_size, t.seq_len), jnp.int32)).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    matmuls = model_flops(m, t) / 3
    assert matmuls <= xla <= 1.1 * matmuls, (matmuls, xla)


@pytest.mark.parametrize("flag, value, allowed", [
    ("--sections", "train,warp", "allowed: comma-separated train, wide, compile, seeds, probes, e2e"),
    ("--torch-variants", "jit", "allowed: comma-separated eager, compile"),
    ("--e2e-blocks", "admin", "allowed: comma-separated post_ln, pre_ln, rezero"),
    ("--e2e-depths", "2,0", "allowed: comma-separated integers >= 1"),
    ("--e2e-steps", "many", "allowed: an integer >= 1"),
    ("--repeats", "0", "allowed: an integer >= 1"),
    ("--torch-threads", "two", "allowed: auto or an integer >= 1"),
])
def test_bench_rejects_bad_flags(flag, value, allowed):
    """One line naming the flag and what is allowed, exit 2, before JAX or PyTorch starts."""
    proc = _run("bench.py", flag, value, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {flag}: invalid value {value!r}; {allowed}")


def test_grid_flops_of_the_quick_grid_by_hand():
    """grid_flops sums model FLOPs × steps × seeds over the cells. The quick grid by hand: 3 blocks at depths
    2, 8, 24; D 32, F 64, T 16, B 16, the reverse task's 17-token vocabulary; 2 seeds × 600 steps."""
    from jaxnorm.benchmarking.flops import grid_flops
    from jaxnorm.sweep_spec import expand, preset

    per_layer, head = 8 * 32 * 32 + 4 * 32 * 64 + 4 * 16 * 32, 2 * 32 * 17
    by_hand = 3 * 16 * 16 * (3 * (2 + 8 + 24) * per_layer + 9 * head) * 600 * 2
    spec = preset("quick")
    assert grid_flops(expand(spec)) == pytest.approx(by_hand, rel=1e-12)
    # a steps = 0 cell counts its one measured step
    assert grid_flops(expand(spec.replace(train=spec.train.replace(steps=0)))) == pytest.approx(by_hand / 600)


def test_grid_cost_hours_at_a_peak_and_the_mfu_a_budget_needs():
    grid_cost = _script_module("grid_cost")
    table = grid_cost.hours_table(3600e12, {"float32": (1e12, "a datasheet"), "bfloat16": (None, "unknown: x")},
                                  [1.0, 0.5, 0.01], 2.0)
    rows = table.splitlines()
    assert rows[2] == "| float32 | 1e+12 | 1 h | 2 h | 4.17 days | 0.5 | a datasheet |"
    assert rows[3] == "| bfloat16 | — | — | — | — | — | unknown: x |"
    from jaxnorm.benchmarking.timing import duration
    assert [duration(s) for s in (42.0, 450.0, 11700.0, 2 * 86400.0)] == ["42 s", "7.5 min", "3.25 h", "2 days"]
    proc = _run("grid_cost.py", "--preset", "quick", "--device", "NVIDIA H200")
    assert proc.returncode == 0, proc.stderr
    assert "`quick`: 9 cells, 18 runs of 600 steps: 1.742e+12 model FLOPs, on NVIDIA H200" in proc.stdout
    assert "| float32 | 4.947e+14 | 0.00352 s |" in proc.stdout  # 1.742e12 / 4.947e14 s
    for flag, value in (("--mfu", "1.5"), ("--hours", "0"), ("--preset", "tiny")):
        proc = _run("grid_cost.py", flag, value)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {flag}: invalid value {value!r}; allowed")


def test_published_peaks_name_their_source():
    """The published figure of a known GPU comes with its datasheet; a CPU's is derived from /proc/cpuinfo's
    family and clock (and says so); anything else is None with the reason."""
    from jaxnorm.benchmarking import peaks

    value, source = peaks.published_peak("gpu", "NVIDIA H100 80GB HBM3", "bfloat16")
    assert value == pytest.approx(989.4e12) and "datasheet" in source
    assert peaks.published_peak("gpu", "NVIDIA H200", "float32")[0] == pytest.approx(494.7e12)
    value, source = peaks.published_peak("gpu", "Some Future GPU", "float32")
    assert value is None and source.startswith("unknown")
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "flags": "fma avx2 avx512f"}
    assert peaks._flops_per_cycle(zen4)[0] == 32
    assert peaks._flops_per_cycle({"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "avx2 fma"})[0] == 32
    assert peaks._flops_per_cycle({"vendor_id": "ARM", "flags": ""})[0] is None
    value, source = peaks.published_peak("cpu", "cpu", "float32")
    assert (value is None and source.startswith("unknown")) or (value > 0 and source.startswith("derived"))


def test_bench_seeds_section_measures_seeds_split_over_cpu_devices():
    """bench.py's seeds section with its default --cpu-devices: with 2 cores or more the S = 2 row also
    times the program with one seed per CPU device, as `jaxnorm.trainer` runs it (a measured time, not '—')."""
    from jaxnorm.sharding import usable_cores

    proc = _run("bench.py", "--tiny", "--sections", "seeds")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 2 |"))
    _, one_ms, split_ms, devices, seq_ms, one_ratio, split_ratio = [c.strip() for c in row.strip("| ").split("|")]
    assert float(one_ms) > 0 and float(seq_ms) > 0 and float(one_ratio) > 0
    if usable_cores() >= 2:
        assert devices == "2" and float(split_ms) > 0
        assert float(split_ratio) == pytest.approx(float(seq_ms) / float(split_ms), rel=0.02, abs=0.01)
    else:
        assert split_ms == devices == split_ratio == "—"
