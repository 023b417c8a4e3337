"""Test-session settings, applied before any test module imports jax.

Tests check values, not speed, and nearly all of their time is XLA compiling hundreds of tiny distinct
programs on CPU. Backend optimisation level 0 compiles those several times faster (the programs run a
little slower, which at test sizes is negligible); numerics stay float32. A persistent compilation cache
shared by the xdist workers lets tests that rerun the same cells (resume, shards, reruns) reuse programs;
it is keyed by the program text, so a cached program is the program the test asked for.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXNORM_XLA_CACHE", os.path.join(tempfile.gettempdir(), f"jaxnorm-test-xla-{os.getuid()}"))

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAXNORM_XLA_CACHE"] or None)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# Start JAX's backend now, with one CPU device: an in-process `depth_sweep.main` then keeps it
# (`--cpu-devices auto` would otherwise split this worker's CPU for every later test).
jax.devices()
