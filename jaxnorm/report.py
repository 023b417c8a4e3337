"""`write_report(run_dir)` -> <run_dir>/report.md: the findings first (computed from the results by
`jaxnorm.findings`), then what was run, the results table (every number aggregated over seeds by the one
rule of `jaxnorm.aggregate`, with its spread), the LR-sensitivity table and the figures that exist in
<run_dir>/figures/.

Run `figures.draw_all(run_dir)` first (scripts/plot_sweep.py does both); the report links only figures on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from jaxnorm import aggregate, axes, findings, outcome, results, rundir
from jaxnorm.figures import FIGURES
from jaxnorm.plots import check_run_dir

# Results-table columns: (results column, heading). Each is shown as "value (lo–hi)" over seeds.
TRAINING_COLUMNS = (("final_loss", "final train loss"), ("final_accuracy", "train accuracy"),
                    ("final_eval_loss", "eval loss"), ("grad_decades_init", "∇ decades, init"),
                    ("grad_decades_final", "∇ decades, end"), ("grad_decades_mlp_out_final", "W2 ∇ decades, end"),
                    ("grad_ratio_final", "first/last ∇, end"))
INIT_COLUMNS = (("grad_decades_init", "∇ decades"), ("grad_decades_mlp_out_init", "W2 ∇ decades"),
                ("act_grad_decades_init", "∂x ∇ decades"), ("grad_ratio_init", "first/last ∇"),
                ("jac_end_to_end_init", "‖∂x_L/∂x_0‖₂"), ("token_alignment_last_init", "token alignment, last"))


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}"
    return str(v)


def with_spread(value: float, lo: float, hi: float) -> str:
    if not np.isfinite(value):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        return fmt(value)
    return f"{fmt(value)} ({fmt(lo)} to {fmt(hi)})"


def markdown_table(table: pd.DataFrame) -> str:
    # Not DataFrame.to_markdown: tabulate pads each cell to its column's width, which changes every row's
    # text (tests/test_report.py checks rows verbatim), and it needs the tabulate package.
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def spec_section(sweep: dict, done: int) -> str:
    spec, env = sweep.get("spec", {}), sweep.get("environment", {})
    command = env.get("command") or (" ".join(map(str, env["argv"])) if env.get("argv") else None)
    lines = ["## What was run", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Cells finished: {done} / {sweep.get('num_cells', '?')}", ""]
    for axis in [*axes.fields(), "seeds"]:  # the spec's grid fields (jaxnorm.axes) and its seeds
        if axis in spec:
            v = spec[axis]
            lines.append(f"- {axis}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    t, m = spec.get("train", {}), spec.get("model", {})
    lines.append(f"- task {t.get('task')}, {t.get('steps')} steps, batch {t.get('batch_size')}, seq_len "
                 f"{t.get('seq_len')}; d_model {m.get('d_model')}, heads {m.get('num_heads')}, d_ff {m.get('d_ff')}, "
                 f"init {m.get('init')}, activation {m.get('activation')}")
    if env:
        lines.append(f"- jax {env.get('jax')}, flax {env.get('flax')} on {env.get('device_count')}× "
                     f"{env.get('device_kind')} ({env.get('platform')}); git {str(env.get('git_commit'))[:10]}"
                     + (f"; host CPU: {env['cpu']}" if env.get("cpu") else ""))
    return "\n".join(lines) + "\n"


def settings_section(settings: dict[str, dict]) -> str:
    """When the cells ran under different settings (a resume with --allow-mixed): which cells ran how, by
    the setting keys that differ. Empty when every cell ran under one setting."""
    groups: dict[str, list[str]] = {}
    for cell_id, setting in settings.items():
        groups.setdefault(json.dumps(setting, sort_keys=True), []).append(cell_id)
    if len(groups) < 2:
        return ""
    varying = [k for k in rundir.SETTING_KEYS if len({json.dumps(json.loads(g).get(k)) for g in groups}) > 1]
    lines = ["## Mixed settings", "", "These cells did not all run under one setting (resumed with "
             f"--allow-mixed); their numbers may differ by more than rounding. Differing: {', '.join(varying)}.", ""]
    for key, cells in groups.items():
        setting = json.loads(key)
        lines.append(f"- {', '.join(f'{k}={setting.get(k)}' for k in varying)}: {len(cells)} cells "
                     f"({', '.join(cells)})")
    return "\n".join(lines) + "\n"


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: the axes that vary (block and depth always), then each column of TRAINING_COLUMNS
    (or INIT_COLUMNS for an initialisation-only sweep) as "aggregate (min–max or bootstrap interval)"."""
    cells = aggregate.cell_table(df)
    lead = ["block", "depth"]
    shown = [*lead, *[c for c in results.axis_columns() if c not in lead and c in df and df[c].nunique() > 1]]
    table = cells[shown].copy()
    if outcome.has_training(df):
        ok = df.assign(_t=outcome.trained(df)).groupby("cell_id", sort=False)["_t"].sum()
        table["diverged"] = cells["diverged"].astype(str) + "/" + cells["seeds"].astype(str)
        table["trained"] = ok.reindex(cells.cell_id).astype(int).to_numpy().astype(str) + "/" + cells["seeds"].astype(str)
        columns = TRAINING_COLUMNS
    else:
        columns = INIT_COLUMNS
    for col, heading in columns:
        if col in cells:
            table[heading] = [with_spread(v, lo, hi) for v, lo, hi in
                              zip(cells[col], cells[f"{col}_lo"], cells[f"{col}_hi"])]
    return table.reset_index(drop=True)


def render(run_dir: Path) -> str:
    sweep = json.loads((run_dir / "sweep.json").read_text())
    df = results.load(run_dir)
    parts = [f"# jaxnorm sweep report: {run_dir.name}", ""]
    if df.empty:
        return "\n".join(parts + [spec_section(sweep, 0), "No finished cells yet.", ""])
    figures = {name for name in FIGURES if (run_dir / "figures" / name).is_file()}
    parts += ["## Findings", "", *[f"{i}. {f}" for i, f in enumerate(findings.findings(df, figures), 1)], "",
              spec_section(sweep, df.cell_id.nunique()), settings_section(results.cell_settings(run_dir)),
              "## Results", "", markdown_table(results_table(df)),
              f"Each number is aggregated over a cell's seeds: {aggregate_rule()} Spread in parentheses "
              f"(min–max over seeds; 95% bootstrap interval with ≥ {aggregate.BOOTSTRAP_MIN_SEEDS} seeds). "
              "∇ decades = least-squares slope of log10‖∂loss/∂θ_l‖ over relative depth, i.e. decades of "
              "gradient growth from the input layer to the output layer (> 0: the input layers get less "
              "gradient). W2 = the MLP's output matrix; ∂x = the residual-stream gradient ‖∂loss/∂x_l‖.", ""]
    if outcome.has_training(df):
        parts += [f"{outcome.describe()[0].upper()}{outcome.describe()[1:]}.", ""]
    sens = results.lr_sensitivity(df) if outcome.has_training(df) else pd.DataFrame()
    if len(sens):
        parts += ["## LR sensitivity (Wortsman et al. 2023, §3.2)", "", markdown_table(sens), ""]
    if figures:
        parts += ["## Figures", ""]
        for name, text in FIGURES.items():
            if name in figures:
                parts += [f"### {name[:-4]}", "", text, "", f"![{name[:-4]}](figures/{name})", ""]
    return "\n".join(parts)


def aggregate_rule() -> str:
    return ("losses and accuracies are means, norms and ratios geometric means, decades means; "
            "end-of-training numbers leave out diverged seeds.")


def write_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.md atomically; returns its path."""
    run_dir = check_run_dir(run_dir)
    path = run_dir / "report.md"
    rundir.atomic_write_bytes(path, render(run_dir).encode())
    return path
