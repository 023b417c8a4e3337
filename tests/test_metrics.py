"""The metric registry is the truth: a run records exactly the registered metrics its ProbeConfig turns on,
and the run directory, padding and README follow the registry."""

import re
from pathlib import Path

import numpy as np
import pytest

from jaxnorm import metrics, padding, rundir
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(depth=2, d_model=8, num_heads=2, d_ff=16)
RUN = TrainConfig(task="copy", steps=2, batch_size=2, seq_len=4, log_every=1, eval_every=2, eval_batches=1,
                  progress=False)


@pytest.mark.parametrize("probe", [
    ProbeConfig(amplification=True, spectrum=True, power_iters=2, hutchinson_samples=1, probe_batch=1),
    ProbeConfig(activations=False, jacobian=False, power_iters=2, hutchinson_samples=1, probe_batch=1),
], ids=["all-on", "some-off"])
def test_a_run_records_exactly_the_registered_metrics(probe):
    h = train(TINY, OptimConfig(), RUN, probe)
    assert set(h.metrics) == set(metrics.names("step"))
    logged = [r for r in rundir.metrics_rows(h) if "loss" in r]  # what reaches metrics.jsonl
    assert logged and all(set(r) - {"eval_loss", "eval_accuracy"} == {"step", "seed", *metrics.names("step")}
                          for r in logged)
    assert set(h.layers) == set(metrics.recorded("layer", probe))
    assert set(h.jacobian) == set(metrics.recorded("jacobian", probe))
    L = TINY.depth
    for name, arr in {**h.layers, **h.jacobian}.items():
        has_layer_axis = arr.ndim >= 3 and arr.shape[2] == L
        assert metrics.METRICS[name].per_layer == has_layer_axis, name


def test_padding_cuts_exactly_the_per_layer_metrics():
    rows = {name: np.zeros((1, 2, 6)) for name in metrics.names(per_layer=True)}
    rows.update({name: np.zeros((1, 2)) for name in metrics.names(per_layer=False) if name != "jac_singular_values"})
    rows["jac_singular_values"] = np.zeros((1, 2, 6))  # all singular values of one matrix: 6 is not a layer axis
    cut = padding.unpad_layers(rows, 3)
    for name, v in cut.items():
        expected = (1, 2, 3) if metrics.METRICS[name].per_layer else rows[name].shape
        assert v.shape == expected, name


def test_readme_documents_every_metric():
    text = (ROOT / "README.md").read_text()
    groups = re.search(r"`grad_norm/\{([a-z_,]+)\}`", text).group(1).split(",")
    assert groups == list(metrics.GROUPS)
    for name in metrics.names(kind="layer") + metrics.names(kind="jacobian"):
        if not name.startswith("grad_norm/"):
            assert f"`{name}`" in text, name
