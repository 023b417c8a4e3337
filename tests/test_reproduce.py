"""experiments.reproduce: every published effect gets a complete row, and each criterion says what its claim says.

The `--quick` run checks the table's form (its numbers at that size are not the claims' test); the criteria
are checked on hand-made numbers, so a criterion that looked at the wrong quantity, compared the wrong way
or used the wrong constant fails here.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments import reproduce
from experiments.published_effects import BY_NAME, NAMES, finite_numbers, loglog_slope


def test_quick_run_has_a_complete_row_per_effect(tmp_path, capsys):
    out = tmp_path / "out"
    assert reproduce.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out / "reproduce.csv")
    assert list(df.effect) == list(NAMES)
    assert set(df.verdict) <= {"agree", "disagree"}
    for col in ("paper", "claim", "measured", "threshold"):
        assert df[col].notna().all() and (df[col].str.len() > 0).all(), col
    assert (df.reason.isna() == (df.verdict == "agree")).all()  # a reason exactly where it disagrees
    for name, values in zip(df.effect, df["values"]):
        assert finite_numbers(json.loads(values)), name
    head, table = (out / "reproduce.md").read_text().split("\n\n| effect", 1)
    table = "| effect" + table
    assert table.startswith("| effect | paper | claim | measured | threshold | verdict |")
    assert f"{(df.verdict == 'agree').sum()} of {len(NAMES)} agree" in head and "- command: `" in head
    assert all(f"| {name} |" in table for name in NAMES) and table in printed
    assert all(f"] {name}: " in printed for name in NAMES)  # a line per effect as it finished
    assert sorted(p.name for p in out.iterdir()) == ["reproduce.csv", "reproduce.md"]  # no temporary files left


def test_unknown_only_name_is_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--only", "rank_collapse,no_such_effect", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_effect" in err and all(n in err for n in NAMES)
    assert not (tmp_path / "out").exists()


def test_only_keeps_the_tables_order():
    assert reproduce.selected("z_loss,rank_collapse") == ("rank_collapse", "z_loss")
    assert reproduce.selected(None) == NAMES


def test_every_effect_has_its_measurement():
    from experiments import effect_measurements

    assert all(callable(getattr(effect_measurements, name, None)) for name in NAMES)


# --- the criteria, on hand-made numbers --------------------------------------------------------------------

def test_loglog_slope_against_a_hand_computation():
    # ln x = (0, 1, 2)·ln 2, ln y = (0, 1, 3)·ln 2: centred (-1, 0, 1) and (-4/3, -1/3, 5/3), slope 3/2
    assert loglog_slope([1, 2, 4], [1, 2, 8]) == pytest.approx(1.5)
    assert loglog_slope([4, 8, 16, 32], [3 * d ** -0.5 for d in (4, 8, 16, 32)]) == pytest.approx(-0.5)
    for bad in ([1, 0, 8], [1, -2, 8], [1, float("nan"), 8]):
        assert math.isnan(loglog_slope([1, 2, 4], bad))
    assert math.isnan(loglog_slope([2], [3]))


DEPTHS = [4, 8, 16, 32, 64]


def _deepnet(post_shallow, post_deep, deepnorm_deep, seeds=2):
    return {"shallow": 2, "deep": 24, "seeds": seeds, "post_ln_L2_loss": 0.0, "post_ln_L24_loss": 2.7,
            "deepnorm_L24_loss": 0.0, "post_ln_L2_trained": post_shallow, "post_ln_L24_trained": post_deep,
            "deepnorm_L24_trained": deepnorm_deep}


def _deepnorm(beta_exponent=-0.25, value_gain=None, query_gain=1.0):
    depths = [1, 6, 24]
    beta6 = (8 * 6) ** -0.25
    gains = {"query": query_gain, "key": 1.0, **{k: value_gain or beta6 for k in ("value", "out", "fc1", "fc2")}}
    return {"depths": depths, "alpha": [(2 * n) ** 0.25 for n in depths],
            "beta": [(8 * n) ** beta_exponent for n in depths], "model_depth": 6, "model_alpha": 12 ** 0.25,
            "kernel_ratios": gains}


CASES = [
    # (effect, values, agree): each criterion on both sides of its threshold
    ("xiong_w2_profile", {"depth": 6, "post_ln": 2.0, "pre_ln": 1.0}, True),
    ("xiong_w2_profile", {"depth": 6, "post_ln": 1.9, "pre_ln": 1.0}, False),
    ("xiong_w2_profile", {"depth": 6, "post_ln": 3.0, "pre_ln": 0.49}, False),
    ("xiong_preln_top_grad", {"depths": DEPTHS, "last_w2": [d ** -0.5 for d in DEPTHS]}, True),
    ("xiong_preln_top_grad", {"depths": DEPTHS, "last_w2": [d ** -1.0 for d in DEPTHS]}, False),
    ("xiong_preln_top_grad", {"depths": DEPTHS, "last_w2": [1.0] * 5}, False),
    # E‖x_L‖² = E‖x_0‖² + c·L: linear once the input is taken off, though the raw slope is below 0.75
    ("preln_stream_growth", {"depths": DEPTHS, "in_sq": [30.0] * 5, "out_sq": [30 + 0.5 * d for d in DEPTHS]}, True),
    ("preln_stream_growth", {"depths": DEPTHS, "in_sq": [1.0] * 5, "out_sq": [1 + 0.1 * d * d for d in DEPTHS]}, False),
    ("preln_stream_growth", {"depths": DEPTHS, "in_sq": [1.0] * 5, "out_sq": [1.0] * 5}, False),
    ("liu_output_change", {"depths": DEPTHS, "post_ln": DEPTHS, "pre_ln": list(np.log(DEPTHS)),
                           "admin": list(np.log(DEPTHS))}, True),
    ("liu_output_change", {"depths": DEPTHS, "post_ln": list(np.log(DEPTHS)), "pre_ln": list(np.log(DEPTHS)),
                           "admin": list(np.log(DEPTHS))}, False),
    ("liu_output_change", {"depths": DEPTHS, "post_ln": DEPTHS, "pre_ln": list(np.log(DEPTHS)),
                           "admin": DEPTHS}, False),
    ("deepnet_depth", _deepnet(2, 0, 2), True),
    ("deepnet_depth", _deepnet(2, 0, 1), True),   # half the seeds is enough
    ("deepnet_depth", _deepnet(2, 1, 2), False),  # Post-LN still trains deep
    ("deepnet_depth", _deepnet(0, 0, 2), False),  # Post-LN never trained: nothing stopped
    ("deepnet_depth", _deepnet(2, 0, 0), False),
    ("deepnorm_constants", _deepnorm(), True),
    ("deepnorm_constants", _deepnorm(beta_exponent=-0.5), False),
    ("deepnorm_constants", _deepnorm(value_gain=1.0), False),   # β computed but never applied
    ("deepnorm_constants", _deepnorm(query_gain=0.38), False),  # applied to W_Q too
    ("unscaled_attention", {"head_dims": [8, 64], "dot": [2.7, 2.6], "dot_unscaled": [2.0, 1.4]}, True),
    ("unscaled_attention", {"head_dims": [8, 64], "dot": [2.7, 2.6], "dot_unscaled": [2.0, 1.41]}, False),
    ("unscaled_attention", {"head_dims": [8, 64], "dot": [2.7, 1.5], "dot_unscaled": [2.0, 0.5]}, False),
    ("rank_collapse", {"depth": 24, "no_residual": [0.1, 0.6, 0.98, 0.989, 0.99] + [1.0] * 20,
                       "pre_ln": [0.1] * 24 + [0.94]}, True),
    ("rank_collapse", {"depth": 24, "no_residual": [0.1, 0.6, 0.98, 0.995, 0.98] + [1.0] * 20,
                       "pre_ln": [0.1] * 25}, False),   # read after 4 layers, not 3
    ("rank_collapse", {"depth": 24, "no_residual": [0.1] + [1.0] * 24, "pre_ln": [0.1] * 24 + [0.95]}, False),
    ("rezero_isometry", {"depth": 6, "count": 32, "max_deviation": 1e-5}, True),
    ("rezero_isometry", {"depth": 6, "count": 32, "max_deviation": 2e-5}, False),
    ("attn_logit_growth", {"steps": 300, "dot": [3.0, 6.0], "qk_norm": [3.0, 3.0]}, True),
    ("attn_logit_growth", {"steps": 300, "dot": [3.0, 5.9], "qk_norm": [3.0, 3.0]}, False),
    ("attn_logit_growth", {"steps": 300, "dot": [3.0, 30.0], "qk_norm": [3.0, 16.0]}, False),
    ("z_loss", {"steps": 300, "coefficient": 1e-4, "log_z_init": 4.6, "without": 3.0, "with": -0.9}, True),
    ("z_loss", {"steps": 300, "coefficient": 1e-4, "log_z_init": 4.6, "without": 3.0, "with": 1.2}, False),
    ("z_loss", {"steps": 300, "coefficient": 1e-4, "log_z_init": 4.6, "without": 0.8, "with": 0.6}, False),
    ("entropy_collapse", {"factors": [1, 4, 16], "dot": [2.6, 1.0, 1.3], "sigma_reparam": [2.7, 2.75, 2.6]}, True),
    ("entropy_collapse", {"factors": [1, 4, 16], "dot": [2.6, 1.0, 1.4], "sigma_reparam": [2.7, 2.7, 2.7]}, False),
    ("entropy_collapse", {"factors": [1, 4, 16], "dot": [2.6, 1.0, 0.1], "sigma_reparam": [2.7, 2.4, 2.7]}, False),
]


@pytest.mark.parametrize("name, values, agree", CASES)
def test_criterion(name, values, agree):
    row = BY_NAME[name].verdict(values)
    assert row.agree is agree, row.measured
    assert (row.verdict == "agree") is agree and (row.reason == "") is agree
    assert "\n" not in row.verdict and row.measured


def test_every_criterion_is_tested_both_ways():
    assert {(name, agree) for name, _, agree in CASES} == {(n, a) for n in NAMES for a in (True, False)}
