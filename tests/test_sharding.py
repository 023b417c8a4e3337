"""Parallelism over local devices: with 8 (simulated) devices the seeds and the batch are split, with 2 the
seeds alone, and results equal one device's."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxnorm import sharding
from jaxnorm.config import ConfigError

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from jaxnorm import sharding
    from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
    from jaxnorm.trainer import train

    def measure():
        mesh = sharding.train_mesh(2)
        h = train(ModelConfig(depth=2, d_model=16, num_heads=2, d_ff=32), OptimConfig(lr=3e-3),
                  TrainConfig(task="copy", steps=12, batch_size=16, seq_len=8, seeds=2, log_every=4,
                              eval_every=6, progress=False),
                  ProbeConfig(power_iters=5, hutchinson_samples=2, probe_every=6))
        return {"devices": jax.device_count(), "mesh": None if mesh is None else dict(mesh.shape),
                "loss": h.metrics["loss"].tolist(), "grad": h.layers["grad_norm/all"].tolist(),
                "jac": h.jacobian["jac_spectral"].tolist(), "eval": h.eval_loss.tolist()}

    if __name__ == "__main__":
        if int(sys.argv[1]):
            sharding.set_cpu_devices(int(sys.argv[1]))
        print(json.dumps(measure()))
""")


def run_with_devices(n, *, via_flag=True):
    """The script in a fresh process with n CPU devices, set by XLA_FLAGS or by sharding.set_cpu_devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if via_flag:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    out = subprocess.run([sys.executable, "-c", SCRIPT, "0" if via_flag else str(n)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_here():
    """The script's measurement in this test process, which has one CPU device (tests/conftest.py)."""
    namespace = {}
    exec(SCRIPT, namespace)
    return namespace["measure"]()


def assert_same_results(a, b):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["grad"], b["grad"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(a["jac"], b["jac"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(a["eval"], b["eval"], rtol=1e-4, atol=1e-5)


def test_split_seeds_and_batch_match_one_device():
    one, eight, two = run_here(), run_with_devices(8), run_with_devices(2, via_flag=False)
    assert one["devices"] == 1 and one["mesh"] is None
    assert eight["devices"] == 8 and eight["mesh"] == {"seeds": 2, "data": 4}   # 2 seeds, batch over 4
    assert two["devices"] == 2 and two["mesh"] == {"seeds": 2, "data": 1}       # one seed per device
    assert_same_results(eight, one)
    assert_same_results(two, one)


def test_auto_cpu_devices_divides_the_seeds():
    assert sharding.auto_cpu_devices(2, cores=2) == 2
    assert sharding.auto_cpu_devices(8, cores=2) == 2
    assert sharding.auto_cpu_devices(8, cores=6) == 8      # 6 does not divide 8; 4 and 8 are as near, the larger wins
    assert sharding.auto_cpu_devices(3, cores=2) == 3      # a device per seed, 1.5 per core
    assert sharding.auto_cpu_devices(5, cores=2) == 1      # 5 devices would be over twice the cores
    assert sharding.auto_cpu_devices(6, cores=4) == 3      # 3 is nearer 4 than 6 is
    assert sharding.auto_cpu_devices(1, cores=16) == 1
    assert sharding.auto_cpu_devices(12, cores=16) == 12


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_cpu_devices_rejects_bad_counts(bad):
    with pytest.raises(ConfigError, match="cpu_devices"):
        sharding.set_cpu_devices(bad)
