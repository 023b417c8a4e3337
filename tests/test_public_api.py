"""The notebook-facing API: `import jaxnorm` exposes what __all__ promises, and its examples run."""

import doctest
import subprocess
import sys

import jax.numpy as jnp

import jaxnorm
from jaxnorm import config


def test_every_name_in_all_exists():
    assert len(set(jaxnorm.__all__)) == len(jaxnorm.__all__)
    for name in jaxnorm.__all__:
        assert getattr(jaxnorm, name) is not None, name
    assert set(jaxnorm.__all__) <= set(dir(jaxnorm))


def test_registries_are_configs():
    for name in ("BLOCKS", "NORMS", "ATTENTIONS", "ACTIVATIONS", "INITS", "OPTIMIZERS", "CLIPS", "SCHEDULES", "TASKS"):
        assert getattr(jaxnorm, name) == getattr(config, name), name


def test_exports_are_the_library_functions():
    from jaxnorm import model, results, sweep

    assert jaxnorm.run_sweep is sweep.run and jaxnorm.apply is model.apply and jaxnorm.load is results.load
    # `train` and `init` are plain functions: no submodule of that name shadows them, even once every
    # submodule is imported.
    from jaxnorm import init_schemes, trainer

    assert jaxnorm.train is trainer.train and jaxnorm.init is model.init
    assert not hasattr(init_schemes, "__call__") and type(jaxnorm).__name__ == "module"


def test_import_is_light():
    code = "import sys, jaxnorm; print(sorted(m for m in ('jax', 'flax', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _run_doctest(obj, name):
    globs = {"jaxnorm": jaxnorm, "jnp": jnp}
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(recurse=False).find(obj, name, globs=globs):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0, name


def test_model_docstring_example():
    _run_doctest(jaxnorm.Model, "Model")


def test_train_docstring_example():
    from jaxnorm.trainer import train

    _run_doctest(train, "train")
