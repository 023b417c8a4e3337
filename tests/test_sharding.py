"""Data parallelism: with 8 (simulated) devices the batch is sharded and results equal one device's."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
    from jaxnorm import sharding
    from jaxnorm.train import train
    mesh = sharding.data_mesh()
    h = train(ModelConfig(depth=2, d_model=16, num_heads=2, d_ff=32), OptimConfig(lr=3e-3),
              TrainConfig(task="copy", steps=12, batch_size=16, seq_len=8, seeds=2, log_every=4,
                          eval_every=6, progress=False),
              ProbeConfig(power_iters=5, hutchinson_samples=2, probe_every=6))
    print(json.dumps({"devices": jax.device_count(), "mesh": None if mesh is None else mesh.size,
                      "loss": h.metrics["loss"].tolist(), "grad": h.layers["grad_norm/all"].tolist(),
                      "eval": h.eval_loss.tolist()}))
""")


def run_with_devices(n):
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one():
    one, eight = run_with_devices(1), run_with_devices(8)
    assert one["devices"] == 1 and one["mesh"] is None
    assert eight["devices"] == 8 and eight["mesh"] == 8
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eight["grad"], one["grad"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(eight["eval"], one["eval"], rtol=1e-4, atol=1e-5)
