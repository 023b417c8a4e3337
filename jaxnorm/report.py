"""`write_report(run_dir)` -> <run_dir>/report.md: what was run, the results table, observations computed
from the results, the LR-sensitivity table and the figures that exist in <run_dir>/figures/.

Run `plots.draw_all(run_dir)` first (scripts/plot_sweep.py does both); the report links only figures on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from jaxnorm import results
from jaxnorm.plots import FIGURES, check_run_dir
from jaxnorm.plots_training import TRAINED_FRACTION, has_training, trained

SPEC_AXES = ("depths", "blocks", "norms", "attentions", "optimizers", "clips", "lrs", "seeds")


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def spec_section(sweep: dict, done: int) -> str:
    spec, env = sweep.get("spec", {}), sweep.get("environment", {})
    argv = env.get("argv")
    lines = ["## What was run", ""]
    if argv:
        lines += [f"Command: `{' '.join(map(str, argv))}`", ""]
    lines += [f"Cells finished: {done} / {sweep.get('num_cells', '?')}", ""]
    for axis in SPEC_AXES:
        if axis in spec:
            v = spec[axis]
            lines.append(f"- {axis}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    t, m = spec.get("train", {}), spec.get("model", {})
    lines.append(f"- task {t.get('task')}, {t.get('steps')} steps, batch {t.get('batch_size')}, seq_len "
                 f"{t.get('seq_len')}; d_model {m.get('d_model')}, heads {m.get('num_heads')}, d_ff {m.get('d_ff')}, "
                 f"init {m.get('init')}, activation {m.get('activation')}")
    if env:
        lines.append(f"- jax {env.get('jax')}, flax {env.get('flax')} on {env.get('device_count')}× "
                     f"{env.get('device_kind')} ({env.get('platform')}); git {str(env.get('git_commit'))[:10]}")
    return "\n".join(lines) + "\n"


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per cell; `diverged` = diverged seeds / seeds."""
    g = df.groupby("cell_id", sort=False)
    first = g[results.AXIS_COLUMNS].first()
    table = first.assign(
        final_train_loss=g["final_loss"].mean(), final_eval_loss=g["final_eval_loss"].mean(),
        diverged=g["diverged"].sum().astype(int).astype(str) + "/" + g.size().astype(str),
        grad_ratio_init=g["grad_ratio_init"].mean(), grad_ratio_final=g["grad_ratio_final"].mean())
    return table.reset_index(drop=True)


def observations(df: pd.DataFrame) -> list[str]:
    """Sentences computed from the results (nothing here is canned: each names cells and numbers)."""
    out: list[str] = []
    per_cell = df.groupby("cell_id", sort=False)
    if has_training(df):
        df = df.assign(_trained=trained(df))
        out.append(f"'Trained' means: did not diverge and final train loss < {TRAINED_FRACTION:g} × initial loss.")
        for block, b in df.groupby("block", sort=False):
            ok_depths = [d for d, bd in b.groupby("depth") if bd["_trained"].all()]
            counts = b.groupby("depth")["_trained"].agg(["sum", "size"])
            if ok_depths:
                out.append(f"`{block}` trained on all seeds of every cell up to depth L={max(ok_depths)} "
                           f"(depths where it did: {', '.join(map(str, ok_depths))}).")
            else:
                best = counts["sum"].idxmax()
                out.append(f"`{block}` trained on all seeds at no depth (best: {int(counts.loc[best, 'sum'])}/"
                           f"{int(counts.loc[best, 'size'])} runs at L={best}).")
        div = df[df["diverged"].astype(bool)]
        if div.empty:
            out.append(f"No run diverged ({len(df)} runs).")
        else:
            first = div.sort_values("diverged_step").iloc[0]
            out.append(f"{len(div)} of {len(df)} runs diverged; earliest: `{first.cell_id}` seed {first.seed} at "
                       f"step {_fmt(first.diverged_step)}.")
        deepest = df[df.depth == df.depth.max()]
        best = deepest.groupby("cell_id", sort=False)["final_loss"].mean().dropna()
        if len(best):
            cid = best.idxmin()
            out.append(f"Lowest mean final loss at the deepest depth L={df.depth.max()}: `{cid}` ({best.min():.4g}).")
    ratio = per_cell["grad_ratio_init"].mean().dropna()
    if len(ratio):
        hi, lo = ratio.idxmax(), ratio.idxmin()
        axes = per_cell[["block", "depth"]].first()
        out.append(f"Largest first/last-layer gradient ratio at init: `{axes.loc[hi, 'block']}` at depth "
                   f"L={axes.loc[hi, 'depth']} ({ratio.max():.3g}); smallest: `{axes.loc[lo, 'block']}` at "
                   f"L={axes.loc[lo, 'depth']} ({ratio.min():.3g}). (< 1: the first layers get less gradient.)")
    e2e = per_cell["jac_end_to_end_init"].mean().dropna() if "jac_end_to_end_init" in df else pd.Series()
    if len(e2e):
        axes = per_cell[["block", "depth"]].first()
        out.append(f"Largest end-to-end Jacobian norm ‖∂x_L/∂x_0‖₂ at init: `{axes.loc[e2e.idxmax(), 'block']}` at "
                   f"L={axes.loc[e2e.idxmax(), 'depth']} ({e2e.max():.3g}); smallest: "
                   f"`{axes.loc[e2e.idxmin(), 'block']}` at L={axes.loc[e2e.idxmin(), 'depth']} ({e2e.min():.3g}).")
    sens = results.lr_sensitivity(df) if has_training(df) else pd.DataFrame()
    if len(sens):
        top, low = sens.loc[sens.lr_sensitivity.idxmax()], sens.loc[sens.lr_sensitivity.idxmin()]
        out.append(f"Most LR-sensitive: `{top.block}` at L={top.depth} ({top.lr_sensitivity:.3g}); least: "
                   f"`{low.block}` at L={low.depth} ({low.lr_sensitivity:.3g}).")
    return out


def render(run_dir: Path) -> str:
    sweep = json.loads((run_dir / "sweep.json").read_text())
    df = results.load(run_dir)
    parts = [f"# jaxnorm sweep report: {run_dir.name}", "", spec_section(sweep, df.cell_id.nunique() if len(df) else 0)]
    if df.empty:
        return "\n".join(parts + ["No finished cells yet.", ""])
    parts += ["## Results (mean over seeds per cell)", "", markdown_table(results_table(df)),
              "grad ratio = ‖∇θ first layer‖ / ‖∇θ last layer‖ (< 1: vanishing towards the input).", "",
              "## Observations", "", *[f"- {o}" for o in observations(df)], ""]
    sens = results.lr_sensitivity(df) if has_training(df) else pd.DataFrame()
    if len(sens):
        parts += ["## LR sensitivity (Wortsman et al. 2023, §3.2)", "", markdown_table(sens), ""]
    figures = [(name, text) for name, text in FIGURES.items() if (run_dir / "figures" / name).is_file()]
    if figures:
        parts += ["## Figures", ""]
        for name, text in figures:
            parts += [f"### {name[:-4]}", "", text, "", f"![{name[:-4]}](figures/{name})", ""]
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.md atomically (tmp file + os.replace); returns its path."""
    run_dir = check_run_dir(run_dir)
    path = run_dir / "report.md"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".report.md.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(run_dir))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
