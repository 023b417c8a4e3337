"""What the 1/√d_k is for: attention forms as the head size grows, told apart from the width.

    python -m experiments.attention_scaling                 # at init: 4 forms × 7 configurations
    python -m experiments.attention_scaling --steps 100     # also after 100 training steps
    python -m experiments.attention_scaling --tiny          # 2 forms × 3 configurations, one layer: the test

d_model = heads·d_k, so two sweeps separate head size from width: the head-size sweep varies d_k at a fixed
d_model (64; heads = 64/d_k: 8, 4, 2, 1 for d_k 8..64), the width sweep varies d_model at a fixed d_k (8;
heads = d_model/8), d_ff = 4·d_model. For each attention form (dot, dot_unscaled, cosine, qk_norm) and
configuration it runs `jaxnorm.trainer.train` (steps = 0: one measured pass at initialisation) and records,
mean over heads, layers and seeds: attention entropy (nats), each head's largest attention logit, and the
Q/K gradient norm ‖∂loss/∂(W_Q, W_K)‖ (`grad_norm/attn_qk`; it grows with width in both forms, as the
matrices have more entries). Expected at init: dot_unscaled's logits have standard deviation ≈ √d_k, so
along the head-size sweep its logits grow and its entropy falls towards one-hot while dot stays flat;
along the width sweep the two forms move together (their ratio stays put). Measured with --tiny (depth 1,
2 seeds, batch 8, seq_len 8; head size d_k 4 -> 32 at d_model 32, width 4 -> 32 at d_k 4): largest logit
dot_unscaled 5.7 -> 14.4 and dot 2.8 -> 2.5 over head size, 3.3 -> 5.7 and 1.6 -> 2.8 over width (the
unscaled/scaled ratio 2.0 -> 5.7 over head size, 2.0 -> 2.0 over width); entropy dot_unscaled 1.48 -> 0.88
over head size, 1.67 -> 1.48 over width. Writes <out>/attention_scaling.csv (column `sweep`: head_size or
width) and .png (one row per sweep), prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.trainer import train

ATTENTION_FORMS = ("dot", "dot_unscaled", "cosine", "qk_norm")
HEAD_DIMS = (8, 16, 32, 64)   # the head-size sweep: d_k at fixed width D_MODEL (heads = D_MODEL / d_k)
D_MODEL = 64
WIDTHS = (8, 16, 32, 64)      # the width sweep: d_model at fixed head size D_K (heads = d_model / D_K)
D_K = 8
SWEEPS = {"head_size": "head size d_k", "width": "width d_model"}
TINY = dict(attentions=("dot", "dot_unscaled"), head_dims=(4, 32), d_model=32, widths=(4, 32), d_k=4, depth=1,
            seeds=2, batch_size=8, seq_len=8)


def measure(attention: str, d_k: int, heads: int, *, depth: int = 2, steps: int = 0, seeds: int = 2,
            batch_size: int = 16, seq_len: int = 16, lr: float = 1e-3, block: str = "pre_ln") -> list[dict]:
    """One row at init (and one at the end when steps > 0) for one attention form, head size and head count
    (d_model = heads·d_k, d_ff = 4·d_model)."""
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
        rows.append({"attention": attention, "d_k": d_k, "d_model": d_model, "heads": heads, "when": when,
                     "step": int(h.layer_steps[index]),
                     "attn_entropy": lay["attn_entropy"].mean(),
                     # each head's largest logit, averaged over heads, layers and seeds: a max over heads
                     # would grow with the head count alone (more draws), confounding the width sweep
                     "attn_logit_max": lay["attn_logit_max"].mean(),
                     "grad_norm_attn_qk": lay["grad_norm/attn_qk"].mean(),
                     "loss": float(np.nanmean(h.metrics["loss"][index]))})
    return rows


def points(*, head_dims=HEAD_DIMS, d_model: int = D_MODEL, widths=WIDTHS, d_k: int = D_K) -> list[tuple[str, int, int]]:
    """(sweep, d_k, heads) of both sweeps: head size at fixed width, then width at fixed head size."""
    if bad := [n for n in head_dims if n < 1 or d_model % n]:
        raise ValueError(f"head sizes {bad}: allowed: positive divisors of d_model={d_model}")
    if bad := [w for w in widths if w < 1 or w % d_k]:
        raise ValueError(f"widths {bad}: allowed: positive multiples of d_k={d_k}")
    return ([("head_size", dk, d_model // dk) for dk in head_dims] +
            [("width", d_k, w // d_k) for w in widths])


def run(out: str | Path = "runs/attention_scaling", *, attentions=ATTENTION_FORMS, head_dims=HEAD_DIMS,
        d_model: int = D_MODEL, widths=WIDTHS, d_k: int = D_K, steps: int = 0, **kw) -> pd.DataFrame:
    """Measure every attention form on both sweeps (a configuration in both is measured once), write
    <out>/attention_scaling.csv and .png; returns the table (column `sweep`: head_size or width)."""
    from jaxnorm.plots import save
    from jaxnorm.sweep import use_compilation_cache

    use_compilation_cache()  # reruns (and tests) reuse the compiled programs
    grid_points = points(head_dims=head_dims, d_model=d_model, widths=widths, d_k=d_k)
    measured: dict[tuple[str, int, int], list[dict]] = {}
    rows = []
    for a in attentions:
        for sweep, dk, heads in grid_points:
            if (a, dk, heads) not in measured:
                measured[(a, dk, heads)] = measure(a, dk, heads, steps=steps, **kw)
            rows += [{"sweep": sweep, **r} for r in measured[(a, dk, heads)]]
    df = pd.DataFrame(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "attention_scaling.csv", index=False)
    save(figure(df), out / "attention_scaling.png")
    return df


def figure(df: pd.DataFrame):
    """Two rows: head size d_k at fixed d_model (top), width d_model at fixed d_k (bottom); three columns:
    max logit, entropy, Q/K gradient norm (y shared per column); solid = init, dashed = end of training."""
    from matplotlib.lines import Line2D

    from jaxnorm.plots import colors, grid, suptitle
    from jaxnorm.plots_layers import plain_log_ticks

    panels = (("attn_logit_max", "largest attention logit of a head", True),
              ("attn_entropy", "attention entropy (nats)", False),
              ("grad_norm_attn_qk", r"$\|\partial\,\mathrm{loss}/\partial(W_Q, W_K)\|$ per layer", True))
    forms = list(dict.fromkeys(df.attention))
    color = dict(zip(forms, colors(len(forms), "tab10")))
    sweeps = [s for s in SWEEPS if s in set(df.sweep)]
    fig, axes = grid(len(sweeps), 3, sharey="col")
    for r, sweep in enumerate(sweeps):
        part = df[df.sweep == sweep]
        x_col = "d_k" if sweep == "head_size" else "d_model"
        fixed = (f"d_model = {part.d_model.iloc[0]}, heads = d_model/d_k" if sweep == "head_size"
                 else f"d_k = {part.d_k.iloc[0]}, heads = d_model/d_k")
        xs = sorted(part[x_col].unique())
        for c, (ax, (col, label, log)) in enumerate(zip(axes[r], panels)):
            for (form, when), g in part.groupby(["attention", "when"], sort=False):
                g = g.sort_values(x_col)
                ax.plot(g[x_col], g[col], marker="o", color=color[form], linestyle="-" if when == "init" else "--",
                        label=form if when == "init" else None)
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            if log:
                ax.set_yscale("log")
                plain_log_ticks(ax)
            ax.set_xlabel(f"{SWEEPS[sweep]}  ({fixed})", fontsize="small")
            ax.set_ylabel(label)
            ax.set_title(f"varying {SWEEPS[sweep]}", fontsize="small")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if set(df.when) != {"init"}:
        handles += [Line2D([], [], color="k"), Line2D([], [], color="k", linestyle="--")]
        labels += ["at init", f"after {df.step.max()} steps"]
    fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="attention", framealpha=0.7)
    suptitle(fig, "Attention forms: which of head size (top) or width (bottom) drives logit growth and "
                  "entropy collapse (mean over heads, layers and seeds)")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Attention forms as the head dimension grows (at init, optionally trained).")
    p.add_argument("--out", default="runs/attention_scaling")
    p.add_argument("--steps", type=int, default=0, help="training steps after the init profile (0 = init only)")
    p.add_argument("--attentions", default=",".join(ATTENTION_FORMS))
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)),
                   help=f"head sizes d_k of the head-size sweep, each dividing --d-model (default {D_MODEL})")
    p.add_argument("--d-model", type=int, default=D_MODEL, help="the fixed width of the head-size sweep")
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)),
                   help=f"widths d_model of the width sweep, each a multiple of --d-k (default {D_K})")
    p.add_argument("--d-k", type=int, default=D_K, help="the fixed head size of the width sweep")
    p.add_argument("--tiny", action="store_true", help="two forms, two sizes per sweep, one layer (for tests)")
    args = p.parse_args(argv)
    if args.tiny:
        kw = dict(TINY)
    else:
        kw = dict(attentions=tuple(args.attentions.split(",")), head_dims=tuple(int(d) for d in args.head_dims.split(",")),
                  d_model=args.d_model, widths=tuple(int(w) for w in args.widths.split(",")), d_k=args.d_k)
    try:
        points(**{k: kw[k] for k in ("head_dims", "d_model", "widths", "d_k")})
    except ValueError as e:
        p.error(str(e))
    df = run(args.out, steps=args.steps, **kw)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    print(f"wrote {Path(args.out) / 'attention_scaling.csv'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
