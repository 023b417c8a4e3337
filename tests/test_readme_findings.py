"""The README's Findings come from the committed results: every number a finding quotes is recomputed here
from results/compare-cpu/results.csv (seeds aggregated by jaxnorm.aggregate's one rule) or read from
results/reproduce-cpu/reproduce.csv, and must appear, formatted as the README writes it, in that finding;
every figure a finding links to must be committed."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxnorm import aggregate, outcome, results

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "results" / "compare-cpu"
REPRODUCE = ROOT / "results" / "reproduce-cpu"


def findings() -> list[str]:
    """The numbered statements of the README's "## Findings" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Findings\n", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\d+\. (.+?)(?=^\d+\. |\Z)", section, re.S | re.M)]


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return pd.read_csv(COMPARE / "results.csv", keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def cells(runs) -> pd.DataFrame:
    return aggregate.cell_table(runs)


def one(cells, *, value, **where) -> float:
    rows = cells
    for k, v in where.items():
        rows = rows[np.isclose(rows[k], v)] if isinstance(v, float) else rows[rows[k] == v]
    assert len(rows) == 1, where
    return float(rows[value].iloc[0])


def decades(cells, block, depth, lr, optimizer="adamw", clip="none", when="final") -> str:
    return f"{one(cells, value=f'grad_decades_{when}', block=block, depth=depth, lr=lr, optimizer=optimizer, clip=clip):.2f}"


def best_eval(cells, block, depth) -> str:
    return f"{cells[(cells.block == block) & (cells.depth == depth)].final_eval_loss.min():.3f}"


def diverged(runs, **where) -> str:
    """"k of n": how many of the runs matching `where` diverged."""
    rows = runs
    for k, v in where.items():
        rows = rows[np.isclose(rows[k], v)] if isinstance(v, float) else rows[rows[k] == v]
    return f"{int(rows.diverged.astype(bool).sum())} of {len(rows)}"


def expected(runs, cells) -> list[list[str]]:
    """Per finding, the numbers it must quote (the README's formatting)."""
    live = cells[cells.diverged == 0]
    sens = results.lr_sensitivity(runs).groupby(["optimizer", "clip", "block"]).lr_sensitivity.mean()
    rezero = runs[runs.block == "rezero"]
    reproduce = pd.read_csv(REPRODUCE / "reproduce.csv")
    agree = reproduce.verdict.eq("agree")
    best_train, context_free = cells.final_loss.min(), outcome.baseline_losses(runs).iloc[0]
    return [
        [decades(cells, "post_ln", 48, 3e-3, when="init"), decades(cells, "post_ln", 16, 3e-3),
         decades(cells, "post_ln", 48, 3e-3), decades(cells, "post_ln", 48, 1e-2),
         decades(cells, "post_ln", 48, 3e-2), decades(cells, "pre_ln", 48, 3e-3)],
        [decades(cells, "deepnorm", 48, 3e-3), decades(cells, "admin", 48, 3e-3),
         decades(cells, "deepnorm", 48, 1e-2), decades(cells, "admin", 48, 1e-2),
         decades(cells, "pre_ln", 48, 1e-2), decades(cells, "rezero", 48, 1e-2),
         (diverged(runs[runs.block.isin(["deepnorm", "admin"])], optimizer="adamw"))],
        [best_eval(cells, b, d) for b in ("rezero", "pre_ln", "post_ln", "deepnorm", "admin") for d in (2, 48)],
        [(diverged(runs, optimizer="rmsprop")), (diverged(runs, optimizer="adamw")),
         (diverged(rezero, optimizer="rmsprop")), (diverged(rezero, optimizer="rmsprop", lr=1e-2)),
         (diverged(rezero, optimizer="rmsprop", lr=3e-2)), (diverged(rezero, optimizer="rmsprop", depth=2)),
         (diverged(rezero, optimizer="adamw")),
         f"{sens['rmsprop', 'none', 'rezero']:.2f}", f"{sens['adamw', 'none', 'rezero']:.2f}",
         *(f"{sens[opt, 'none', block]:.3f}" for block in ("post_ln", "pre_ln") for opt in ("rmsprop", "adamw")),
         (diverged(runs[runs.block != "rezero"], optimizer="rmsprop")),
         decades(cells, "post_ln", 48, 3e-3, optimizer="rmsprop"), decades(cells, "post_ln", 48, 3e-3),
         decades(cells, "post_ln", 48, 1e-2, optimizer="rmsprop"), decades(cells, "post_ln", 48, 1e-2)],
        [(diverged(runs, optimizer="adamw", clip="none")), (diverged(runs, optimizer="adamw", clip="global_norm:1.0")),
         (diverged(rezero, optimizer="rmsprop", clip="global_norm:1.0")),
         (diverged(rezero, optimizer="rmsprop", clip="none")),
         decades(cells, "post_ln", 48, 3e-3, clip="global_norm:1.0"), decades(cells, "post_ln", 48, 3e-3)],
        [f"{live.final_eval_loss.min():.2f}", f"{live.final_eval_loss.max():.2f}",
         f"{outcome.chance_losses(runs).iloc[0]:.2f}", str(len(cells)), str(len(runs)),
         f"{best_train:.2f}", f"{1 - best_train / context_free:.0%}", f"{context_free:.2f}",
         (diverged(runs[runs.block == "post_ln"], optimizer="adamw"))],
        [f"{int(agree.sum())} of {len(reproduce)}", *reproduce.loc[~agree, "effect"]],
    ]


def test_readme_findings_quote_the_committed_results(runs, cells):
    stated = findings()
    want = expected(runs, cells)
    assert 5 <= len(stated) <= 8 and len(stated) == len(want)
    for i, (text, numbers) in enumerate(zip(stated, want), start=1):
        for number in numbers:
            assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text), f"finding {i} lacks {number}"


def test_no_run_of_the_compare_preset_counts_as_trained(runs):
    """Finding 6: the committed runs recorded their context-free loss, and no cell gets 10% below it."""
    assert runs.context_free_loss.notna().all() and runs.context_free_loss.nunique() == 1
    assert not outcome.learned_anything(runs) and not outcome.trained(runs).any()
    report = (COMPARE / "report.md").read_text()
    assert "1. No cell learned the task" in report and "runs trained" not in report


def test_every_finding_points_to_a_committed_figure_or_table():
    for i, text in enumerate(findings(), start=1):
        links = re.findall(r"\]\((results/[^)]+)\)", text)
        assert links, f"finding {i} links to nothing under results/"
        for link in links:
            assert (ROOT / link).is_file(), link
        assert any(link.endswith(".png") for link in links) or i == len(findings()), f"finding {i} has no figure"


def test_the_committed_report_names_its_command_and_machine():
    report = (COMPARE / "report.md").read_text()
    assert "Command: `python -m experiments.depth_sweep --preset compare" in report
    assert "host CPU:" in report and "Cells finished: 240 / 240" in report
    assert not list(COMPARE.glob("cells")), "per-layer arrays are not committed"


def test_post_ln_profiles_are_finite_down_to_float32s_range(runs):
    """Finding 1: Post-LN at L=48 with AdamW at lr 3e-2 ends with a finite profile (its first layer's gradient
    1e-19 to 1e-28 times the last layer's, which a plain float32 norm read as 0) and no run diverged; with
    clipping at that rate one seed's first layers are below float32's smallest normal number, the sweep's
    only undefined profile."""
    post = runs[(runs.block == "post_ln") & (runs.depth == 48) & np.isclose(runs.lr, 3e-2) & (runs.optimizer == "adamw")]
    unclipped, clipped = post[post["clip"] == "none"], post[post["clip"] == "global_norm:1.0"]
    assert len(unclipped) == 3 and not unclipped.diverged.astype(bool).any()
    assert unclipped.grad_decades_final.notna().all() and (unclipped.grad_decades_final > 10).all()
    assert unclipped.grad_ratio_final.between(1e-29, 1e-18).all()
    assert clipped.grad_decades_final.isna().sum() == 1
    undefined = clipped[clipped.grad_decades_final.isna()].iloc[0]
    assert undefined.seed == 2 and undefined.grad_zero_layers_final == 2  # "one seed's first two layers"
    live = runs[~runs.diverged.astype(bool)]
    assert live.grad_decades_final.isna().sum() == 1 and (live.grad_zero_layers_final > 0).sum() == 1
