"""Execute the research notebooks top to bottom in a fresh kernel, in tiny mode (JAXNORM_NOTEBOOK_TINY=1), and the
Colab notebook's install and backend checks with what the runtime types look like.

The kernel is this interpreter (`sys.executable`, so the venv with jaxnorm installed) and inherits the
test session's XLA settings from conftest.py; tiny mode also skips the Colab install cell (no network).
"""

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "experiments" / "notebooks"


class _ThisPythonKernel:
    """A kernel spec manager whose `python3` kernel runs this interpreter (not whatever is on PATH)."""

    @staticmethod
    def spec_manager():
        from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

        class Manager(KernelSpecManager):
            def get_kernel_spec(self, kernel_name):
                return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                  display_name="Python 3", language="python", resource_dir=".")
        return Manager()


@pytest.mark.parametrize("name", ["explore.ipynb", "depth_sweep_colab.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: clear outputs before committing"
    monkeypatch.setenv("JAXNORM_NOTEBOOK_TINY", "1")  # the kernel inherits this process's environment
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisPythonKernel.spec_manager())
    client = nbclient.NotebookClient(nb, km=km, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # runs/ land in tmp_path
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def _colab_cell(index: int) -> str:
    nb = nbformat.read(NOTEBOOKS / "depth_sweep_colab.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"][index]


@pytest.mark.parametrize("runtime,extra", [("tpu", "[tpu]"), ("gpu", "[cuda]"), ("cpu", "")])
def test_colab_install_cell_installs_the_jax_of_the_runtime_type(monkeypatch, runtime, extra):
    """The install cell outside CI: a clear error while REPO_URL is unset, else one pip install of jaxnorm with
    the extra of the runtime type (detected as Colab shows it: a TPU's env/devices, nvidia-smi for a GPU)."""
    import glob
    import os
    import shutil
    import subprocess

    calls = []
    monkeypatch.delenv("JAXNORM_NOTEBOOK_TINY", raising=False)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd))
    for name in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if runtime == "gpu" else None)
    if runtime == "tpu":
        monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    source = _colab_cell(0)
    with pytest.raises(ValueError, match=r"REPO_URL is not set .* set it in this cell"):
        exec(source, {})
    assert calls == []
    url = "https://github.com/someone/jaxnorm@main"
    namespace: dict = {}
    exec(source.replace('"https://github.com/<OWNER>/jaxnorm"', repr(url)), namespace)
    assert namespace["RUNTIME"] == runtime
    assert [c[-1] for c in calls] == [f"jaxnorm{extra} @ git+{url}"] and calls[0][1:5] == ["-m", "pip", "install", "-q"]


def test_colab_backend_check_names_the_fix(monkeypatch):
    monkeypatch.setenv("JAXNORM_NOTEBOOK_TINY", "1")
    namespace: dict = {"os": __import__("os")}
    exec(_colab_cell(1), namespace)
    namespace["check_backend"]("tpu", "tpu")
    with pytest.raises(RuntimeError, match=r"this GPU runtime runs JAX on 'cpu': Runtime -> Restart session.*cuda12"):
        namespace["check_backend"]("gpu", "cpu")
