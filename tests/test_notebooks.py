"""Execute the research notebooks top to bottom in a fresh kernel, in tiny mode (JAXNORM_NOTEBOOK_TINY=1).

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
