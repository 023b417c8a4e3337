"""The one aggregation rule, the 'trained' rule, the depth statistic and report.md, on known data.

The run directory is test_plots.py's: synthetic Histories written by the real writers, whose outcome is known
(post_ln diverges at depth 8, pre_ln trains everywhere, post_ln's gradient halves per layer towards the input).
"""

import math
import os
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from jaxnorm import aggregate, cell_stats, figures, findings, outcome, plots, plots_layers, plots_training, report, results
from test_plots import run_dir  # noqa: F401 (the shared synthetic run directory fixture)


# --- the aggregation rule on hand-computed values ---------------------------------------------------------

def test_seed_aggregate_geometric_and_arithmetic_by_hand():
    a = aggregate.seed_aggregate([2.70, 0.063], geometric=True)
    assert a.value == pytest.approx(math.sqrt(2.70 * 0.063)) and (a.lo, a.hi, a.n) == (0.063, 2.70, 2)
    b = aggregate.seed_aggregate([1.0, 2.0, np.nan], geometric=False)
    assert b.value == pytest.approx(1.5) and b.n == 2
    # a geometric mean leaves out values <= 0; nothing usable -> NaN
    assert aggregate.seed_aggregate([4.0, 0.0, -1.0], geometric=True).value == pytest.approx(4.0)
    assert math.isnan(aggregate.seed_aggregate([np.nan], geometric=False).value)


def test_ratio_of_means_equals_mean_of_ratios_under_the_rule():
    first, last = np.array([2.0, 8.0, 0.5]), np.array([4.0, 1.0, 2.0])
    of_ratios = aggregate.seed_aggregate(first / last, geometric=True).value
    of_means = aggregate.seed_aggregate(first, True).value / aggregate.seed_aggregate(last, True).value
    assert of_ratios == pytest.approx(of_means)


def test_bootstrap_interval_from_five_seeds():
    x = [1.0, 2.0, 3.0, 4.0, 100.0]
    a = aggregate.seed_aggregate(x, geometric=False)
    assert a.value == pytest.approx(22.0) and a.n == 5
    assert 1.0 <= a.lo < a.value < a.hi <= 100.0 and (a.lo, a.hi) != (1.0, 100.0)
    rng = np.random.default_rng(aggregate.BOOTSTRAP_SEED)  # the same resampling, by hand
    draws = np.asarray(x)[rng.integers(0, 5, (aggregate.BOOTSTRAP_RESAMPLES, 5))].mean(axis=1)
    assert (a.lo, a.hi) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))


def test_end_of_training_columns_leave_out_diverged_seeds():
    rows = pd.DataFrame({"final_loss": [1.0, 9.0], "initial_loss": [3.0, 3.2], "diverged": [False, True]})
    assert aggregate.column_aggregate(rows, "final_loss").value == 1.0
    assert aggregate.column_aggregate(rows, "initial_loss").value == pytest.approx(3.1)


# --- the depth statistic ----------------------------------------------------------------------------------

def test_decades_slope_against_polyfit():
    rng = np.random.default_rng(1)
    for L in (2, 3, 8, 24):
        norms = np.exp(rng.normal(size=L))
        x = (np.arange(L) + 0.5) / L
        assert cell_stats.decades_slope(norms) == pytest.approx(np.polyfit(x, np.log10(norms), 1)[0], rel=1e-9)
    assert cell_stats.decades_slope(10.0 ** np.linspace(-4, 0, 24)) == pytest.approx(4 * 24 / 23)  # endpoints
    assert math.isnan(cell_stats.decades_slope(np.array([1.0])))
    assert math.isnan(cell_stats.decades_slope(np.array([1.0, 0.0])))


# --- trained ----------------------------------------------------------------------------------------------

def test_trained_on_known_outcomes(run_dir):  # noqa: F811
    df = results.load(run_dir)
    ok = outcome.trained(df)
    bad = df[(df.block == "post_ln") & (df.depth == 8)]
    assert not ok[bad.index].any() and ok.drop(bad.index).all()


def _quick_like(final_losses: dict) -> pd.DataFrame:
    """A results frame shaped like the quick preset's (reverse, 16 symbols, 2 seeds)."""
    rows = []
    for (block, depth), losses in final_losses.items():
        for seed, loss in enumerate(losses):
            rows.append({"cell_id": f"L{depth}-{block}", "block": block, "depth": depth, "seed": seed,
                         "task": "reverse", "num_symbols": 16, "vocab_size": 17, "steps": 180,
                         "initial_loss": 2.80, "final_loss": loss, "diverged": False})
    return pd.DataFrame(rows)


def test_trained_relative_to_chance_and_the_best_cell():
    # The quick preset's measured final losses before its calibration: every cell above half its initial
    # loss (the old rule said nothing trained), Post-LN at depth 24 at chance (ln 16 = 2.77).
    df = _quick_like({("post_ln", 2): (2.10, 2.11), ("pre_ln", 2): (2.08, 2.09), ("rezero", 2): (2.54, 2.55),
                      ("post_ln", 24): (2.774, 2.773), ("pre_ln", 24): (2.06, 2.07), ("rezero", 24): (1.86, 1.88)})
    ok = df.assign(t=outcome.trained(df)).groupby("cell_id").t.all()
    assert ok["L24-pre_ln"] and ok["L24-rezero"] and not ok["L24-post_ln"]
    assert outcome.chance_losses(df).iloc[0] == pytest.approx(math.log(16))
    # threshold = chance − ½(chance − best cell): best = 1.87
    assert outcome.trained_threshold(df).iloc[0] == pytest.approx(math.log(16) - 0.5 * (math.log(16) - 1.87))
    # nothing learned: no run counts as trained
    stuck = _quick_like({("pre_ln", 2): (2.75, 2.76), ("post_ln", 2): (2.77, 2.77)})
    assert not outcome.trained(stuck).any()


def _text_like(final_losses: dict, context_free: float | None = 3.12) -> pd.DataFrame:
    """A results frame shaped like the compare preset's (mlm on a 96-character corpus, 2 seeds): per
    (block, optimizer) its seeds' final losses, a NaN loss marking a diverged seed."""
    rows = []
    for (block, optimizer), losses in final_losses.items():
        for seed, loss in enumerate(losses):
            rows.append({"cell_id": f"L2-{block}-{optimizer}", "block": block, "depth": 2, "optimizer": optimizer,
                         "clip": "none", "lr": 1e-2, "seed": seed, "task": "mlm", "num_symbols": 16,
                         "vocab_size": 97, "steps": 200, "initial_loss": 4.6, "final_loss": loss,
                         "diverged": bool(np.isnan(loss))})
    df = pd.DataFrame(rows)
    return df if context_free is None else df.assign(context_free_loss=context_free)


def test_trained_on_text_is_measured_from_the_character_frequencies():
    # The compare preset's situation: every run ends near the corpus's character-frequency entropy (3.12), far
    # below a uniform guess over its 96 characters (4.56); the best cell is 4% below the frequencies.
    losses = {("pre_ln", "adamw"): (3.00, 3.02), ("post_ln", "adamw"): (3.05, 3.06),
              ("pre_ln", "rmsprop"): (3.04, np.nan), ("post_ln", "rmsprop"): (np.nan, np.nan)}
    df = _text_like(losses)
    assert outcome.baseline_losses(df).iloc[0] == pytest.approx(3.12)
    assert outcome.chance_losses(df).iloc[0] == pytest.approx(math.log(96))
    assert not outcome.learned_anything(df) and not outcome.trained(df).any()
    cells = aggregate.cell_table(df)
    text = findings.trainability(df, cells, set())
    assert text.startswith("No cell learned the task: the best mean final loss, 3.01, is within 10% of the "
                           "context-free loss (3.12: predicting the corpus's character frequencies"), text
    assert "a uniform guess is 4.56" in text
    # Stability is then not diverging: adamw 0 of 4 runs, rmsprop 3 of 4.
    stable = findings.stability_by_optimizer(df, set())
    assert stable.startswith("Most stable optimizer: `adamw` (0/4 runs diverged); least: `rmsprop` (3/4 runs "
                             "diverged)."), stable
    # A run that closed half the gap from the frequencies to a best cell well below them trains; one at the
    # frequencies does not.
    learnt = _text_like({("pre_ln", "adamw"): (1.50, 1.52), ("post_ln", "adamw"): (3.10, 3.11)})
    assert outcome.trained_threshold(learnt).iloc[0] == pytest.approx(3.12 - 0.5 * (3.12 - 1.51))
    assert outcome.trained(learnt).tolist() == [True, True, False, False]
    assert "trained" in findings.stability_by_optimizer(
        _text_like({**losses, ("pre_ln", "adamw"): (1.50, 1.52)}), set())


def test_stability_map_shows_divergence_when_nothing_learned():
    # Nothing learned beyond the frequencies: the map counts runs that did not diverge, and says so.
    df = _text_like({("pre_ln", "adamw"): (3.00, 3.02), ("post_ln", "adamw"): (3.05, 3.06),
                     ("pre_ln", "rmsprop"): (3.04, np.nan), ("post_ln", "rmsprop"): (np.nan, np.nan)})
    fig = plots_training.stability_map(df)
    fig.canvas.draw()
    texts = {ax.get_title(): sorted(t.get_text() for t in ax.texts) for ax in fig.axes if ax.texts}
    assert texts == {"optimizer=adamw": ["2/2", "2/2"], "optimizer=rmsprop": ["0/2", "1/2"]}, texts
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "fraction of runs that did not diverge" in labels
    assert "Stability map: runs that did not diverge / runs" in fig._suptitle.get_text()
    # Once a cell learned, it counts trained runs again.
    learnt = plots_training.stability_map(_text_like({("pre_ln", "adamw"): (1.5, 1.5), ("post_ln", "adamw"): (3.1, 3.1)}))
    assert "fraction of runs that trained" in [ax.get_ylabel() for ax in learnt.axes]
    plt.close(fig), plt.close(learnt)


def test_loss_vs_depth_marks_the_character_frequencies_on_text():
    df = _text_like({("pre_ln", "adamw"): (3.00, 3.02), ("post_ln", "adamw"): (3.05, 3.06)})
    df = pd.concat([df, df.assign(depth=8, cell_id=df.cell_id.str.replace("L2", "L8"))], ignore_index=True)

    def levels(fig):  # the horizontal reference lines: y -> line style
        found = {round(float(line.get_ydata()[0]), 2): line.get_linestyle() for ax in fig.axes
                 for line in ax.get_lines() if line.get_linestyle() in (":", "-.")}
        plt.close(fig)
        return found
    assert levels(plots_training.loss_vs_depth(df)) == {4.56: ":", 3.12: "-."}
    synthetic = _quick_like({("pre_ln", 2): (0.1, 0.1), ("pre_ln", 8): (2.7, 2.7)}).assign(
        context_free_loss=math.log(16), lr=1e-2, optimizer="adamw", clip="none")
    assert levels(plots_training.loss_vs_depth(synthetic)) == {2.77: ":"}


def test_without_learning_the_profile_finding_quotes_the_cells_the_figures_show():
    # Two placements at L=48; per placement, the figures' cell (the first optimizer: adamw) and another with a
    # lower final loss (rmsprop). Nothing learned beyond the frequencies: the lower loss is noise, so the finding
    # quotes the figures' cells; once the task is learned, the lowest-loss cells.
    def frame(context_free):
        df = _text_like({("post_ln", "adamw"): (3.06, 3.06), ("post_ln", "rmsprop"): (3.00, 3.00),
                         ("pre_ln", "adamw"): (3.07, 3.07), ("pre_ln", "rmsprop"): (3.01, 3.01)}, context_free)
        decades = {("post_ln", "adamw"): 7.0, ("post_ln", "rmsprop"): 9.0, ("pre_ln", "adamw"): -0.5,
                   ("pre_ln", "rmsprop"): 0.25}
        return df.assign(depth=48, grad_decades_final=[decades[b, o] for b, o in zip(df.block, df.optimizer)],
                         cell_id=df.cell_id.str.replace("L2", "L48"))
    shown, _ = plots.fix_others(frame(3.12), ("block", "depth"))
    assert set(shown.optimizer) == {"adamw"}
    unlearnt = findings.findings(frame(3.12))[1]
    assert "`post_ln` (adamw) at L=48 has the steepest gradient profile: ‖∂loss/∂θ_l‖ grows 7.00 decades" in unlearnt
    assert "each placement's cell the figures show" in unlearnt and "`pre_ln` (adamw) -0.50" in unlearnt
    learnt = findings.findings(frame(None))[1]   # against a uniform guess (4.56) every cell learned
    assert "`post_ln` (rmsprop) at L=48 has the steepest gradient profile: ‖∂loss/∂θ_l‖ grows 9.00 decades" in learnt
    assert "each placement at the setting of its lowest final loss at L=48" in learnt
    assert "`pre_ln` (rmsprop) 0.25" in learnt


def test_divergence_finding_counts_runs_in_words():
    one = _text_like({("pre_ln", "adamw"): (3.0,)})
    assert findings.divergence(one, set()) == "No run diverged (1 run)."
    assert findings.divergence(_text_like({("pre_ln", "adamw"): (3.0, 3.1)}), set()) == "No run diverged (2 runs)."


def test_results_without_the_context_free_loss_fall_back_to_chance():
    df = _text_like({("pre_ln", "adamw"): (3.00, 3.02), ("post_ln", "adamw"): (3.05, 3.06)}, context_free=None)
    assert outcome.baseline_losses(df).iloc[0] == pytest.approx(math.log(96))
    assert outcome.trained_threshold(df).iloc[0] == pytest.approx(math.log(96) - 0.5 * (math.log(96) - 3.01))
    assert outcome.trained(df).all()
    missing = _text_like({("pre_ln", "adamw"): (3.00, 3.02)}, context_free=float("nan"))
    assert outcome.baseline_losses(missing).iloc[0] == pytest.approx(math.log(96))
    # A sweep resumed across versions: cells written before the column read their task's recorded value.
    mixed = pd.concat([_text_like({("pre_ln", "adamw"): (3.0, 3.0)}, context_free=None),
                       _text_like({("post_ln", "adamw"): (3.0, 3.0)})], ignore_index=True)
    assert outcome.baseline_losses(mixed).tolist() == pytest.approx([3.12] * 4)


def test_chance_loss_per_task():
    assert outcome.chance_loss("sort", 17, 16) == pytest.approx(math.log(16))
    assert outcome.chance_loss("lm", 100, 16) == pytest.approx(math.log(100))
    assert outcome.chance_loss("mlm", 101, 16) == pytest.approx(math.log(100))


# --- one number everywhere --------------------------------------------------------------------------------

def _console_value(table: str, cell_id: str, column: str) -> float:
    lines = table.splitlines()
    header = lines[0].split()
    row = next(line for line in lines if line.startswith(cell_id)).split()
    return float(row[1 + header.index(column)])


def test_console_report_and_figures_show_the_same_numbers(run_dir):  # noqa: F811
    df = results.load(run_dir)
    cells = aggregate.cell_table(df).set_index("cell_id")
    console = results.summary_table(df)
    text = report.render(run_dir)
    layers = plots.LayerStore(run_dir)
    for cid, cell in cells.iterrows():
        # the console and the report print the aggregate of the per-seed values by the one rule
        rows = df[df.cell_id == cid]
        for column in ("final_loss", "grad_decades_final"):
            expected = rows[~rows.diverged.astype(bool)][column].mean()  # by hand: both are means over kept seeds
            assert cell[column] == pytest.approx(expected)
            assert _console_value(console, cid, column) == pytest.approx(expected, rel=1e-3)
            assert report.fmt(expected) in text
    # the report's post_ln L=8 row: one of two seeds diverged and neither trained
    assert "| post_ln | 8 | 0.001 | 1/2 | 0/2 |" in text and "| pre_ln | 8 | 0.001 | 0/2 | 2/2 |" in text

    # grad_profile plots per-layer geometric means: its first/last points give the table's ratio, and the
    # slope of its log10 line the table's decades (the mean of per-seed slopes)
    fig = plots_layers.grad_profile(df, layers)
    post8 = cells[(cells.block == "post_ln") & (cells.depth == 8)].iloc[0]
    line = next(l for l in fig.axes[0].lines if l.get_label() == "L=8")
    y = np.asarray(line.get_ydata(), dtype=float)
    assert y[0] / y[-1] == pytest.approx(post8.grad_ratio_init, rel=1e-9)
    assert cell_stats.decades_slope(y) == pytest.approx(post8.grad_decades_init, rel=1e-9)

    # loss_vs_depth plots, per block and depth, the final loss of one of its cells as the table has it
    fig = plots_training.loss_vs_depth(df)
    for block in ("post_ln", "pre_ln"):
        solid = next(l for l in fig.axes[0].lines if l.get_label() == block)
        for depth, value in zip(solid.get_xdata(), solid.get_ydata()):
            options = cells[(cells.block == block) & (cells.depth == depth)]["final_loss"]
            assert np.isclose(options, value, rtol=1e-12).any(), (block, depth, value)


def test_findings_name_cells_numbers_and_figures(run_dir):  # noqa: F811
    df = results.load(run_dir)
    out = findings.findings(df, set(figures.FIGURES))
    assert 3 <= len(out) <= findings.MAX_FINDINGS
    joined = "\n".join(out)
    assert "`post_ln` trained in every run at L=2; no run at L=8" in joined
    assert "`pre_ln` trained in every run at L=2, 8" in joined
    # post_ln's gradient halves per layer: log10(2) decades per layer over 8 layers = 8·0.301·(8/8)...
    steep = next(f for f in out if "steepest gradient profile" in f)
    # the sweep has two learning rates, so the finding names the cell it picked: the lower final loss
    cells = aggregate.cell_table(df)
    best = cells[(cells.block == "post_ln") & (cells.depth == 8)].sort_values("final_loss").iloc[0]
    assert f"`post_ln` (lr={best.lr:g}) at L=8" in steep and "figures/grad_profile.png" in steep
    assert "each placement at the setting of its lowest final loss at L=8, as the figures show" in steep
    assert "2 of 16 runs diverged" in joined and "at step 12" in joined


def _profile_finding(df: pd.DataFrame) -> str:
    """The gradient-profile finding ("the steepest" only while two placements have a finite profile)."""
    return next(f for f in findings.findings(df) if "decades from the input layer to the output layer" in f)


def test_findings_tell_gradients_that_vanished_past_float32_from_non_finite_ones(run_dir):  # noqa: F811
    df = results.load(run_dir)
    assert (df.grad_zero_layers_final == 0).all()  # the synthetic profiles have no layer at exactly 0
    assert "Left out" not in _profile_finding(df) and "Vanished" not in _profile_finding(df)
    # one run of pre_ln at L=8 vanished past float32 in 3 layers: its slope is NaN, and the finding names it
    live = df[(df.depth == 8) & (df.block == "pre_ln")]
    one = live.index[0]
    gone = df.copy()
    gone.loc[one, ["grad_decades_final", "grad_zero_layers_final"]] = [np.nan, 3]
    r = gone.loc[one]
    assert (f"Left out of the means: 1 run at L=8 (`pre_ln` (lr={r.lr:g}) seed {int(r.seed)}) whose gradient "
            "is exactly 0 in 3 of 8 layers") in _profile_finding(gone)
    # every pre_ln run at L=8 vanished: named as vanished, not as "not finite"
    every = df.copy()
    every.loc[live.index, ["grad_decades_final", "grad_zero_layers_final"]] = [np.nan, 2]
    text = _profile_finding(every)
    assert "Vanished past float32's range at L=8 (the gradient is exactly 0 in some layers): `pre_ln`." in text
    assert "Not finite" not in text and "4 runs at L=8" in text
    # the same NaN slopes without a zero layer (an overflow): "not finite", nothing said of float32's range
    broken = every.assign(grad_zero_layers_final=0)
    text = _profile_finding(broken)
    assert "Not finite at L=8: `pre_ln`." in text and "Vanished" not in text and "Left out" not in text


def test_a_single_placement_is_not_called_the_profile_finding(run_dir):  # noqa: F811
    df = results.load(run_dir)
    pre = df[df.block == "pre_ln"]
    profile = _profile_finding(pre)
    assert "steepest" not in profile and profile.startswith("After training (each placement at the setting of its "
                                                            "lowest final loss at L=8, as the figures show), in "
                                                            "`pre_ln` (lr=")


def test_report_opens_with_findings_and_links_existing_figures(run_dir):  # noqa: F811
    text = report.render(run_dir)
    assert text.index("## Findings") < text.index("## What was run") < text.index("## Results")
    assert "Command: `experiments/depth_sweep.py --x`" in text
    assert "## LR sensitivity" in text


def test_init_only_sweeps_get_init_columns_and_findings(run_dir):  # noqa: F811
    df = results.load(run_dir).assign(steps=0)
    table = report.results_table(df)
    assert "final train loss" not in table.columns and "∇ decades" in table.columns
    assert "diverged" not in results.summary_table(df)
    out = findings.findings(df)
    assert out and all("trained" not in f for f in out) and "At initialisation" in out[0]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_directory_files_respect_the_umask(run_dir, tmp_path, umask, mode):  # noqa: F811
    """Files in a run directory follow the umask, not a private 0600: a directory shared by a group (SLURM) needs it."""
    from jaxnorm import rundir
    old = os.umask(umask)
    try:
        rundir.atomic_write_bytes(tmp_path / "x.json", b"{}")
        figure = plots.save_atomic(plots_training.stability_map(results.load(run_dir)), tmp_path / "map.png")
        written = report.write_report(run_dir)
    finally:
        os.umask(old)
    for path in (tmp_path / "x.json", figure, written):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "x.json"]  # no temporary left behind


def test_trained_on_the_quick_presets_results():
    """The committed results.csv of a `python -m experiments.depth_sweep` run (the quick preset): Pre-LN and
    ReZero at depth 24 count as trained, Post-LN at depth 24 does not, as loss_vs_depth.png shows."""
    df = pd.read_csv(Path(__file__).parent / "data" / "quick_results.csv")
    ok = df.assign(t=outcome.trained(df)).groupby(["block", "depth"]).t.all()
    assert ok[("pre_ln", 24)] and ok[("rezero", 24)] and not ok[("post_ln", 24)]
    assert ok[("pre_ln", 2)] and ok[("post_ln", 2)]
    cells = aggregate.cell_table(df).set_index(["block", "depth"])
    assert cells.loc[("post_ln", 24), "final_loss"] == pytest.approx(math.log(16), abs=0.05)  # stuck at chance
    assert cells.loc[("post_ln", 24), "grad_decades_final"] > 2  # its gradient vanishes towards the input


def test_layer_figures_draw_the_cells_the_findings_quote(run_dir):  # noqa: F811
    # The synthetic sweep learned, at two learning rates: each placement is drawn, and quoted, at the learning
    # rate of its lowest final loss at L=8, the same at both depths, which is not always the sweep's first.
    df = results.load(run_dir)
    cells = aggregate.cell_table(df)
    # by hand: per block, the lr of its lowest mean final loss (seeds that did not diverge) at L=8
    live = df[~df.diverged.astype(bool)]
    mean_loss = live[live.depth == 8].groupby(["block", "lr"]).final_loss.mean()
    best_lr = {b: float(mean_loss[b].idxmin()) for b in ("post_ln", "pre_ln")}
    assert set(best_lr.values()) != {1e-3}, "the fixture should make some placement's best lr not the first"
    want = sorted(cells[np.isclose(cells.lr, cells.block.map(best_lr))].cell_id)
    shown, caption, setting = plots.shown_cells(df)
    assert sorted(shown.cell_id) == want and len(want) == 4
    rep = findings.representative(df, cells.set_index("cell_id"))
    assert sorted(rep.index) == want
    assert setting == {b: f"lr={lr:g}" for b, lr in best_lr.items()} and "lowest final loss" in caption
    store = plots.LayerStore(run_dir)
    fig = plots_layers.grad_profile(df, store)
    titles = {ax.get_title() for ax in fig.axes}
    for block, lr in best_lr.items():
        assert f"{block} (lr={lr:g}) — step 0 (initialisation)" in titles
        # the L=8 line at initialisation is the chosen cell's profile (geometric mean over its seeds)
        cid = rep[(rep.block == block) & (rep.depth == 8)].index[0]
        want = np.exp(np.log(np.asarray(store[cid]["grad_norm/all"][0], np.float64)).mean(axis=0))
        ax = next(a for a in fig.axes if a.get_title().startswith(f"{block} (") and "initialisation" in a.get_title())
        line = next(li for li in ax.get_lines() if li.get_label() == "L=8")
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-9)
    plt.close(fig)
