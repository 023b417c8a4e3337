"""What the 1/√d_k is for: attention forms as the head dimension grows.

    python -m experiments.attention_scaling                 # at init, d_k 8..64: ~4 min CPU time (2-core CPU)
    python -m experiments.attention_scaling --steps 100     # also after 100 training steps
    python -m experiments.attention_scaling --tiny          # 4 compiles (~1 min cold, ~15 s cached); the test

For each attention form (dot, dot_unscaled, cosine, qk_norm) and head size d_k (d_model = heads·d_k,
d_ff = 4·d_model) it runs `jaxnorm.train.train` (steps = 0: one measured pass at initialisation) and
records, mean over layers and seeds: attention entropy (nats), the max attention logit, and the Q/K
gradient norm ‖∂loss/∂(W_Q, W_K)‖ (`grad_norm/attn_qk`). Expected at init: dot_unscaled's logits have
standard deviation ≈ √d_k, so its max logit grows with d_k and its entropy falls towards one-hot; dot
and qk_norm stay roughly flat; cosine's max logit falls (cosines of random vectors concentrate near 0 as
d_k grows, so at a fixed initial τ its attention gets flatter). Measured (depth 2, 2 heads, d_k 8 -> 64):
max logit dot 4.5 -> 3.4, dot_unscaled 11.5 -> 28.0, qk_norm 2.6 -> 3.4, cosine 8.8 -> 3.9. Writes <out>/attention_scaling.csv and .png, prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.train import train

ATTENTION_FORMS = ("dot", "dot_unscaled", "cosine", "qk_norm")
HEAD_DIMS = (8, 16, 32, 64)
TINY = dict(attentions=("dot", "dot_unscaled"), head_dims=(4, 32), depth=1, heads=1, seeds=2, batch_size=8,
            seq_len=8)


def measure(attention: str, d_k: int, *, depth: int = 2, heads: int = 2, steps: int = 0, seeds: int = 2,
            batch_size: int = 16, seq_len: int = 16, lr: float = 1e-3, block: str = "pre_ln") -> list[dict]:
    """One row at init (and one at the end when steps > 0) for one attention form and head size."""
    d_model = heads * d_k
    h = train(ModelConfig(depth=depth, d_model=d_model, num_heads=heads, d_ff=4 * d_model, attention=attention,
                          block=block),
              OptimConfig(lr=lr, warmup_steps=min(10, steps)),
              TrainConfig(task="reverse", steps=steps, batch_size=batch_size, seq_len=seq_len, seeds=seeds,
                          log_every=max(1, steps), eval_every=max(1, steps), eval_batches=1, progress=False),
              ProbeConfig(activations=False, jacobian=False, alignment=False, probe_every=max(1, steps)))
    rows = []
    for index, when in ((0, "init"), (-1, "final")) if steps else ((0, "init"),):
        lay = {k: np.asarray(v[index], dtype=np.float64) for k, v in h.layers.items()}  # [S, L, (H)]
        rows.append({"attention": attention, "d_k": d_k, "d_model": d_model, "when": when,
                     "step": int(h.layer_steps[index]),
                     "attn_entropy": lay["attn_entropy"].mean(),
                     "attn_logit_max": lay["attn_logit_max"].max(axis=(1, 2)).mean(),  # max over L, H; mean over S
                     "grad_norm_attn_qk": lay["grad_norm/attn_qk"].mean(),
                     "loss": float(np.nanmean(h.metrics["loss"][index]))})
    return rows


def run(out: str | Path = "runs/attention_scaling", *, attentions=ATTENTION_FORMS, head_dims=HEAD_DIMS,
        steps: int = 0, **kw) -> pd.DataFrame:
    """Measure every (attention, d_k), write <out>/attention_scaling.csv and .png; returns the table."""
    from jaxnorm.plots import save
    from jaxnorm.sweep import use_compilation_cache

    use_compilation_cache()  # reruns (and tests) reuse the compiled programs
    df = pd.DataFrame([r for a in attentions for d in head_dims for r in measure(a, d, steps=steps, **kw)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "attention_scaling.csv", index=False)
    save(figure(df), out / "attention_scaling.png")
    return df


def figure(df: pd.DataFrame):
    """Three panels vs d_k (log₂): max logit, entropy, Q/K gradient norm; solid = init, dashed = end."""
    from jaxnorm.plots import colors, grid, legend, suptitle

    panels = (("attn_logit_max", "max attention logit", True), ("attn_entropy", "attention entropy (nats)", False),
              ("grad_norm_attn_qk", "‖∂loss/∂(W_Q, W_K)‖ per layer", True))
    forms = list(dict.fromkeys(df.attention))
    color = dict(zip(forms, colors(len(forms), "tab10")))
    fig, axes = grid(1, 3)
    for ax, (col, label, log) in zip(axes[0], panels):
        for (form, when), g in df.groupby(["attention", "when"], sort=False):
            ax.plot(g.d_k, g[col], marker="o", color=color[form], linestyle="-" if when == "init" else "--",
                    label=f"{form} ({when})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(df.d_k.unique()), [str(d) for d in sorted(df.d_k.unique())])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("head dimension d_k")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    legend(axes[0, 0])
    suptitle(fig, "Attention forms vs head dimension (mean over layers and seeds)")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Attention forms as the head dimension grows (at init, optionally trained).")
    p.add_argument("--out", default="runs/attention_scaling")
    p.add_argument("--steps", type=int, default=0, help="training steps after the init profile (0 = init only)")
    p.add_argument("--attentions", default=",".join(ATTENTION_FORMS))
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    p.add_argument("--tiny", action="store_true", help="two forms, two head sizes, one layer (for tests)")
    args = p.parse_args(argv)
    if args.tiny:
        kw = dict(TINY)
    else:
        kw = dict(attentions=tuple(args.attentions.split(",")), head_dims=tuple(int(d) for d in args.head_dims.split(",")))
    df = run(args.out, steps=args.steps, **kw)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    print(f"wrote {Path(args.out) / 'attention_scaling.csv'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
