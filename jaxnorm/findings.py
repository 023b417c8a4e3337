"""The findings that open report.md: 3–6 sentences a researcher would write in a results paragraph, each
computed from the results (nothing here is canned), naming cells and numbers and the figure that shows it.

Every number is aggregated over seeds by `jaxnorm.aggregate`; "trained" is `jaxnorm.outcome.trained`.
Where several cells share a block and depth (other optimizers, clippings, learning rates), a placement's
finding uses the one its figure shows: the placement at the setting of its lowest mean final loss at its
deepest depth (at initialisation, or when no cell learned the task: the first value of each other axis), and
names it.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from jaxnorm import aggregate, outcome, results
from jaxnorm.axes import AXES
from jaxnorm.plots import shown_cells

MAX_FINDINGS = 6
ONE_DECADE = 1.0  # |gradient growth| from which a profile counts as vanishing/exploding towards the input
# Xiong et al. 2020 (Fig. 3): at initialisation Post-LN's W2 gradient grows towards the output, Pre-LN's is
# flat. "Grows" is read as at least a factor of 2 from the input to the output layer (log10 2 decades) and
# more than Pre-LN's by the same margin; fixed from the paper's claim, not from what the code measures.
XIONG_GROWTH = math.log10(2.0)


def _f(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if np.isfinite(v) else "—"


def _d(v: float) -> str:
    """Decades to two decimals (a slope of 1e-17 is 0.00, not a number to read)."""
    if not np.isfinite(v):
        return "—"
    text = f"{v:.2f}"
    return "0.00" if text == "-0.00" else text


def _grows(v: float) -> str:
    """'grows 0.42 decades' / 'shrinks 0.20 decades' (from the input layer to the output layer)."""
    return f"grows {_d(v)} decades" if not np.isfinite(v) or v >= 0 else f"shrinks {_d(-v)} decades"


def _spread(cells: pd.DataFrame, cid: str, col: str) -> str:
    row = cells.loc[cid]
    lo, hi = row[f"{col}_lo"], row[f"{col}_hi"]
    fmt = _d if "decades" in col else _f
    return f" (seeds {fmt(lo)} to {fmt(hi)})" if np.isfinite(lo) and np.isfinite(hi) and lo != hi else ""


def _figure(names: Iterable[str], figures: set[str]) -> str:
    shown = [n for n in names if n in figures]
    return (" — " + ", ".join(f"[{n[:-4]}](figures/{n})" for n in shown)) if shown else ""


def representative(df: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row of `cells` (indexed by cell_id) per (block, depth): the cell the per-layer figures draw
    (`plots.shown_cells`), so that a finding quotes what its figure shows."""
    shown, _, _ = shown_cells(df)
    picked = cells.loc[shown["cell_id"]].reset_index()
    return picked.drop_duplicates(["block", "depth"]).set_index("cell_id")


def _other_axes(cells: pd.DataFrame) -> list[str]:
    """The axes besides block, depth and norm that vary in the sweep: what names a placement's cell."""
    return [c for c in results.axis_columns() if c not in ("block", "depth", "norm") and c in cells
            and cells[c].nunique(dropna=False) > 1]


def _setting(row: pd.Series, axes: list[str]) -> str:
    """" (adamw, global_norm:1.0, lr=0.01)": `row`'s values of `axes`, so a finding about a placement's
    representative cell says which cell it is; "" when no other axis varies."""
    return f" ({', '.join(AXES[c].legend(row[c]) for c in axes)})" if axes else ""


def gradient_profile(rep: pd.DataFrame, cells: pd.DataFrame, when: str, figures: set[str],
                     stream: bool = False, df: pd.DataFrame | None = None, learned: bool = True) -> str | None:
    """Which placement loses gradient towards the input, from which depth, by how many decades (of the
    parameter gradient, or with `stream` of the residual-stream gradient ∂loss/∂x_l). `df`: the per-seed
    results, to name the runs whose gradient vanished past float32's range (left out of the means). `learned`:
    whether `rep` holds the lowest-loss cells (`representative`), else the figures' cells."""
    prefix = "act_grad_decades" if stream else "grad_decades"
    col = f"{prefix}_{when}"
    zeros = f"{'act_grad' if stream else 'grad'}_zero_layers_{when}"
    quantity = "the residual-stream gradient ‖∂loss/∂x_l‖" if stream else "‖∂loss/∂θ_l‖"
    if col not in rep or not np.isfinite(rep[col]).any():
        return None
    deepest = int(rep.depth.max())
    at = rep[rep.depth == deepest].dropna(subset=[col]).sort_values(col, ascending=False)
    if at.empty:
        return None
    worst_id = at.index[0]
    worst = at.iloc[0]
    stage = "after training" if when == "final" else "at initialisation"
    axes = _other_axes(cells)
    others = ", ".join(f"`{r.block}`{_setting(r, axes)} {_d(r[col])}" for _, r in at.iloc[1:].iterrows())
    which = ""
    if axes and when == "final":
        which = (f" (each placement at the setting of its lowest final loss at L={deepest}, as the figures show)"
                 if learned else
                 " (each placement's cell the figures show: no cell learned the task, so the lowest final loss "
                 "would pick one by noise)")
    cell = f"`{worst.block}`{_setting(worst, axes)} at L={deepest}"
    # "the steepest" only where there are profiles to compare (one placement: its profile, said plainly)
    lead = f"{cell} has the steepest gradient profile: " if len(at) > 1 else f"in {cell} "
    text = (f"{stage.capitalize()}{which}, {lead}{quantity} {_grows(worst[col])} from the input layer to the "
            f"output layer{_spread(cells, worst_id, col)}")
    if when == "final" and f"{prefix}_init" in rep:
        text += f", against {_d(worst[f'{prefix}_init'])} at initialisation"
    text += (f" (other placements at L={deepest}: {others})" if others else "") + "."
    block_rows = rep[rep.block == worst.block].sort_values("depth")
    steep = block_rows[block_rows[col] >= ONE_DECADE]
    if worst[col] >= ONE_DECADE and len(steep):
        text += (f" For `{worst.block}` the input layers get less than a tenth of the output layers' gradient "
                 f"from L={int(steep.depth.iloc[0])} on.")
    elif worst[col] < ONE_DECADE:
        text += " No placement loses a full decade of gradient towards the input at this depth."
    flat = at[np.abs(at[col]) < ONE_DECADE / 2]
    if len(flat) and worst[col] >= ONE_DECADE:
        text += f" Within half a decade (flat): {', '.join(f'`{b}`' for b in flat.block)}."
    text += _exploding(rep, col, zeros, deepest)
    if df is not None:
        text += _vanished_past_float32(df, col, zeros, deepest, axes)
    return text + _figure(["grad_profile.png", "act_grad_profile.png"], figures)


def _underflowed(rows: pd.DataFrame, col: str, zeros: str) -> pd.Series:
    """Rows whose profile has no slope because some layer's gradient is exactly 0 (vanished past float32)."""
    if zeros not in rows:
        return pd.Series(False, index=rows.index)
    return ~np.isfinite(rows[col].astype(float)) & (rows[zeros].astype(float) > 0)


def _vanished_past_float32(df: pd.DataFrame, col: str, zeros: str, deepest: int, axes: list[str]) -> str:
    """The runs at the deepest depth whose gradient is exactly 0 in some layers: their slope is undefined, so
    every mean above leaves them out although their gradient vanished furthest; named so that no reader
    takes the means for the whole story."""
    at = df[df.depth == deepest]
    if col.endswith("_final") and "diverged" in at:
        at = at[~at["diverged"].astype(bool)]  # a diverged run's final numbers describe the blow-up
    gone = at[_underflowed(at, col, zeros)]
    if gone.empty:
        return ""
    layers = sorted({int(k) for k in gone[zeros]})
    count = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]} to {layers[-1]}"
    names = ", ".join(f"`{r.block}`{_setting(r, axes)} seed {int(r.seed)}" for _, r in gone.head(3).iterrows())
    more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
    runs, it, has = ("1 run", "it", "has") if len(gone) == 1 else (f"{len(gone)} runs", "they", "have")
    return (f" Left out of the means: {runs} at L={deepest} ({names}{more}) whose gradient is exactly 0 in "
            f"{count} of {deepest} layers: {it} vanished below float32's smallest normal number (~1e-38), "
            f"so {it} {has} no slope to average.")


def _exploding(rep: pd.DataFrame, col: str, zeros: str, deepest: int) -> str:
    """The placement whose gradient grows most towards the input (beyond a decade), and those whose profile is
    not finite at the deepest depth: the other half of the story."""
    text = ""
    steep = rep.dropna(subset=[col])
    steep = steep[steep[col] <= -ONE_DECADE]
    if len(steep):
        worst = steep.loc[steep[col].idxmin()]
        since = int(steep[steep.block == worst.block].depth.min())
        text += (f" The gradient of `{worst.block}` instead grows towards the input: it {_grows(worst[col])} from "
                 f"the input to the output layer at L={int(worst.depth)} (beyond a decade from L={since} on).")
    at = rep[rep.depth == deepest]
    vanished = at[_underflowed(at, col, zeros)]
    broken = at[~np.isfinite(at[col].astype(float)) & ~at.index.isin(vanished.index)]
    if len(vanished):
        text += (f" Vanished past float32's range at L={deepest} (the gradient is exactly 0 in some "
                 f"layers): {', '.join(f'`{b}`' for b in vanished.block)}.")
    if len(broken):
        text += f" Not finite at L={deepest}: {', '.join(f'`{b}`' for b in broken.block)}."
    return text


def trainability(df: pd.DataFrame, cells: pd.DataFrame, figures: set[str]) -> str | None:
    """Which placements train at which depths (pooled over the other axes)."""
    ok = df.assign(_t=outcome.trained(df))
    threshold = outcome.trained_threshold(df)
    if not np.isfinite(threshold).any():
        best = cells["final_loss"].min()
        return (f"No cell learned the task: the best mean final loss, {_f(best)}, is within "
                f"{outcome.MIN_BEST_GAIN:.0%} of {_baseline_phrase(df)}, so no run counts as trained"
                + _figure(["loss_vs_depth.png", "loss_curves.png"], figures) + ".")
    parts = []
    for block, b in ok.groupby("block", sort=False):
        frac = b.groupby("depth")["_t"].mean()
        all_d = [int(d) for d, f in frac.items() if f == 1]
        none_d = [int(d) for d, f in frac.items() if f == 0]
        some_d = [int(d) for d, f in frac.items() if 0 < f < 1]
        phrase = []
        if all_d:
            phrase.append(f"every run at L={', '.join(map(str, all_d))}")
        if some_d:
            phrase.append(f"some runs at L={', '.join(map(str, some_d))}")
        if none_d:
            worst = b[b.depth == none_d[-1]]
            loss = aggregate.column_aggregate(worst, "final_loss").value
            phrase.append(f"no run at L={', '.join(map(str, none_d))} (final loss {_f(loss)} at L={none_d[-1]}, "
                          f"context-free {_f(outcome.baseline_losses(worst).iloc[0])})")
        parts.append(f"`{block}` trained in " + "; ".join(phrase))
    return ("; ".join(parts) + f" ({outcome.describe()}: final loss ≤ {_f(float(np.nanmin(threshold)))} nats)"
            + _figure(["loss_vs_depth.png", "stability_map.png"], figures) + ".")


def _baseline_phrase(df: pd.DataFrame) -> str:
    """The context-free loss, named for what it is: a uniform guess, or (text) the character frequencies."""
    baseline, chance = outcome.baseline_losses(df).iloc[0], outcome.chance_losses(df).iloc[0]
    if np.isclose(baseline, chance):
        return f"chance ({_f(chance)}, a uniform guess)"
    return (f"the context-free loss ({_f(baseline)}: predicting the corpus's character frequencies, what a model "
            f"that ignores its input reaches; a uniform guess is {_f(chance)})")


def divergence(df: pd.DataFrame, figures: set[str]) -> str:
    div = df[df["diverged"].astype(bool)]
    if div.empty:
        return f"No run diverged ({len(df)} run{'s' if len(df) != 1 else ''})."
    shown = []
    for _, r in div.sort_values("diverged_step").head(3).iterrows():
        what = r.get("nonfinite_what")
        where = ""
        if isinstance(what, str) and what != "none":
            where = f"; first non-finite: {what}"
            if np.isfinite(r.get("nonfinite_layer", np.nan)):
                where += f" in layer {int(r['nonfinite_layer'])}"
            if np.isfinite(r.get("nonfinite_step", np.nan)):
                where += f" at step {int(r['nonfinite_step'])}"
        shown.append(f"`{r.cell_id}` seed {int(r.seed)} at step {int(r.diverged_step)}{where}")
    by_block = div.groupby("block", sort=False).size()
    total = df.groupby("block", sort=False).size()
    counts = ", ".join(f"`{b}` {n}/{total[b]}" for b, n in by_block.items())
    return (f"{len(div)} of {len(df)} runs diverged ({counts}); earliest: " + "; ".join(shown)
            + _figure(["loss_curves.png"], figures) + ".")


def stability_by_optimizer(df: pd.DataFrame, figures: set[str]) -> str | None:
    """Which optimizer × clipping (× learning rate) was most stable, when the sweep varies them."""
    keys = [c for c in ("optimizer", "clip") if df[c].nunique() > 1]
    if not keys and df["lr"].nunique() < 2:
        return None
    ok = df.assign(_t=outcome.trained(df), _d=df["diverged"].astype(bool))
    text = ""
    if keys:
        g = ok.groupby(keys, sort=False).agg(trained=("_t", "sum"), diverged=("_d", "sum"), runs=("_t", "size"))
        name = lambda k: " with ".join(f"`{v}`" for v in (k if isinstance(k, tuple) else (k,)))  # noqa: E731
        if outcome.learned_anything(df):
            g = g.assign(_frac=g.trained / g.runs).sort_values(["_frac", "diverged"], ascending=[False, True])
            count = lambda k: (f"{int(g.loc[k, 'trained'])}/{int(g.loc[k, 'runs'])} runs trained, "  # noqa: E731
                               f"{int(g.loc[k, 'diverged'])} diverged")
        else:  # no run can count as trained (trainability says why): stability is not diverging
            g = g.assign(_frac=g.diverged / g.runs).sort_values("_frac", kind="stable")
            count = lambda k: f"{int(g.loc[k, 'diverged'])}/{int(g.loc[k, 'runs'])} runs diverged"  # noqa: E731
        best, worst = g.index[0], g.index[-1]
        text = f"Most stable {' × '.join(keys)}: {name(best)} ({count(best)}); least: {name(worst)} ({count(worst)})."
    sens = results.lr_sensitivity(df)
    if len(sens):
        by = [k for k in ("optimizer", "clip") if k in keys] or ["block"]
        mean = sens.groupby(by, sort=False)["lr_sensitivity"].mean().sort_values()
        label = lambda k: "/".join(map(str, k if isinstance(k, tuple) else (k,)))  # noqa: E731
        text += (" Mean LR sensitivity (Wortsman et al. 2023; lower = a wider working range of learning rates): "
                 + ", ".join(f"`{label(k)}` {_f(v)}" for k, v in mean.items()) + ".")
    return text.strip() + _figure(["stability_map.png", "lr_sensitivity.png"], figures) if text else None


def xiong_comparison(rep: pd.DataFrame, figures: set[str]) -> str | None:
    """Post-LN vs Pre-LN gradient of the MLP output matrix W2 at initialisation (Xiong et al. 2020, Fig. 3)."""
    col = "grad_decades_mlp_out_init"
    if col not in rep or not {"post_ln", "pre_ln"} <= set(rep.block):
        return None
    depths = sorted(set(rep[rep.block == "post_ln"].depth) & set(rep[rep.block == "pre_ln"].depth))
    if not depths or depths[-1] < 2:
        return None
    d = depths[-1]
    post_id = rep[(rep.block == "post_ln") & (rep.depth == d)].index[0]
    pre_id = rep[(rep.block == "pre_ln") & (rep.depth == d)].index[0]
    post, pre = float(rep.loc[post_id, col]), float(rep.loc[pre_id, col])
    if not (np.isfinite(post) and np.isfinite(pre)):
        return None
    same = post >= XIONG_GROWTH and post - pre >= XIONG_GROWTH
    return (f"At initialisation (L={d}) the gradient of the MLP output matrix W2 {_grows(post)} from the input "
            f"to the output layer for `post_ln`{_spread(rep, post_id, col)} and {_grows(pre)} for `pre_ln`"
            f"{_spread(rep, pre_id, col)}. Xiong et al. 2020 (Fig. 3) find it "
            f"growing towards the output for Post-LN and flat for Pre-LN: "
            + ("the same here (Post-LN's grows by more than a factor of 2 and more than Pre-LN's)." if same else
               f"not reproduced here at this size (Post-LN's W2 gradient changes by a factor of {10 ** post:.3g} "
               f"from the input to the output layer; agreement needs a factor ≥ 2, and ≥ 2× Pre-LN's).")
            + _figure(["grad_profile_mlp_out.png", "grad_profile.png"], figures))


def jacobian_and_collapse(rep: pd.DataFrame, figures: set[str]) -> str | None:
    """End-to-end Jacobian norm and token alignment at initialisation, at the deepest depth."""
    deepest = int(rep.depth.max())
    at = rep[rep.depth == deepest]
    parts = []
    if "jac_end_to_end_init" in at and np.isfinite(at["jac_end_to_end_init"]).any():
        j = at["jac_end_to_end_init"].dropna()
        hi, lo = at.loc[j.idxmax()], at.loc[j.idxmin()]
        parts.append(f"at L={deepest} the end-to-end Jacobian ‖∂x_L/∂x_0‖₂ at initialisation ranges from "
                     f"{_f(lo.jac_end_to_end_init)} (`{lo.block}`) to {_f(hi.jac_end_to_end_init)} (`{hi.block}`)")
    if "token_alignment_last_init" in at and np.isfinite(at["token_alignment_last_init"]).any():
        t = at["token_alignment_last_init"].dropna()
        top = at.loc[t.idxmax()]
        parts.append(f"tokens leaving the last layer are most aligned in `{top.block}` (mean cosine "
                     f"{_f(top.token_alignment_last_init)}; 1 = rank collapse)")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + _figure(["jacobian_profile.png", "token_alignment.png"], figures) + "."


def findings(df: pd.DataFrame, figures: set[str] = frozenset()) -> list[str]:
    """The report's findings for a results frame (`results.load`), linking figures present in `figures`."""
    if df.empty:
        return []
    training = outcome.has_training(df)
    cells = aggregate.cell_table(df).set_index("cell_id")
    learned = training and outcome.learned_anything(df)
    rep = representative(df, cells)
    out = []
    if training:
        out += [trainability(df, cells, figures), gradient_profile(rep, cells, "final", figures, df=df, learned=learned),
                divergence(df, figures), stability_by_optimizer(df, figures), xiong_comparison(rep, figures)]
    else:
        out += [gradient_profile(rep, cells, "init", figures, df=df), xiong_comparison(rep, figures),
                jacobian_and_collapse(rep, figures)]
        out.append(gradient_profile(rep, cells, "init", figures, stream=True, df=df))
    return [f for f in out if f][:MAX_FINDINGS]
