"""The tiny sweep several test files share (as a spec and as CLI flags), so they also share compiled programs."""

from jaxnorm.sweep import SweepSpec, preset


def tiny_spec(lrs=(1e-3, 2e-3, 3e-3, 4e-3)) -> SweepSpec:
    """One pre_ln cell per learning rate: depth 2, d_model 16, 6 steps of `reverse`, 2 seeds."""
    q = preset("quick")
    return q.replace(depths=(2,), blocks=("pre_ln",), norms=("layernorm",), attentions=("dot",),
                     optimizers=("adamw",), clips=("none",), lrs=lrs, seeds=2,
                     model=q.model.replace(d_model=16, num_heads=2, d_ff=32),
                     train=q.train.replace(task="reverse", steps=6, batch_size=8, seq_len=8, log_every=2,
                                           eval_every=4),
                     probe=q.probe.replace(probe_every=4))


# The same cells as `tiny_spec` as `experiments.depth_sweep` flags (learning rates via --lrs; its default
# preset's are used without it).
TINY_CELL_FLAGS = ["--depths", "2", "--blocks", "pre_ln", "--norms", "layernorm", "--attentions", "dot",
                   "--optimizers", "adamw", "--clip", "none", "--seeds", "2", "--steps", "6", "--batch-size", "8",
                   "--seq-len", "8", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--log-every", "2",
                   "--eval-every", "4", "--probe-every", "4", "--task", "reverse"]
# results.csv columns that are wall-clock measurements, not results.
TIMING = ["compile_s", "run_s", "steps_per_s", "wall_s"]
