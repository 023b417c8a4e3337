"""The benchmark scripts run end to end with --tiny and print their table headers.

No timing is asserted here: speed claims live in the scripts, as ratios measured side by side in one run.
The smoke runs are started together (each is a separate process, mostly XLA compiling), so the module costs
about the slowest of them. scripts/bench.py's smoke run repeats every other section, so it is marked slow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

HEADERS = {
    "bench_compile.py": ["# compile time vs depth", "| depth | chunk lower s |"],
    "bench_probes.py": ["# probe overhead", "| depth | probes | time ms |"],
    "torch_reference.py": ['"results"'],
    "bench.py": ["# jaxnorm benchmark", "## Train step", "| block | depth | jaxnorm ms/step |",
                 "## Compile time vs depth", "## Seeds", "## Probe overhead"],
}


def _start(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), "--tiny"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def smoke_runs() -> dict[str, tuple[int, str, str]]:
    """bench_compile and bench_probes run concurrently; the results are read once for the module."""
    procs = {name: _start(name) for name in ("bench_compile.py", "bench_probes.py")}
    return {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}


@pytest.mark.parametrize("script", ["bench_compile.py", "bench_probes.py"])
def test_jax_bench_script_smoke(smoke_runs, script):
    rc, out, err = smoke_runs[script]
    assert rc == 0, err[-2000:]
    for header in HEADERS[script]:
        assert header in out


def test_torch_reference_smoke():
    pytest.importorskip("torch", reason="torch is the optional [bench] extra")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "torch_reference.py"), "--tiny", "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"results"' in proc.stdout


@pytest.mark.slow
def test_bench_smoke_writes_nothing(tmp_path):
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--tiny", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in HEADERS["bench.py"]:
        assert header in proc.stdout
    assert not out.exists()  # --tiny never writes results
