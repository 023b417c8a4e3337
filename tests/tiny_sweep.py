"""The tiny sweep spec several test files share, so they also share compiled programs."""

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
