"""experiments.attention_scaling --tiny: without 1/√d_k the logits grow with the head size, not the width."""

import numpy as np
import pandas as pd
import pytest

from experiments import attention_scaling


def test_tiny_separates_head_size_from_width(tmp_path, capsys):
    assert attention_scaling.main(["--tiny", "--out", str(tmp_path)]) == 0
    assert "dot_unscaled" in capsys.readouterr().out
    assert (tmp_path / "attention_scaling.png").read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(tmp_path / "attention_scaling.csv")
    assert set(df.sweep) == {"head_size", "width"}
    assert (df.d_model == df.heads * df.d_k).all()
    head, width = df[df.sweep == "head_size"], df[df.sweep == "width"]
    assert head.d_model.nunique() == 1 and head.d_k.nunique() == 2     # head size varies at a fixed width
    assert width.d_k.nunique() == 1 and width.d_model.nunique() == 2   # width varies at a fixed head size

    def growth(part, x, form, col):
        g = part[part.attention == form].set_index(x)[col].sort_index()
        return g.iloc[-1] / g.iloc[0]

    # Logit std ≈ √d_k unscaled (√8 ≈ 2.8 from d_k 4 to 32), ≈ 1 scaled: the unscaled/scaled ratio grows with
    # the head size ...
    assert growth(head, "d_k", "dot_unscaled", "attn_logit_max") > 2.0 * growth(head, "d_k", "dot", "attn_logit_max")
    assert growth(head, "d_k", "dot_unscaled", "attn_logit_max") > 2.0
    # ... and not with the width (whatever the width does, it does to both forms alike).
    ratio = growth(width, "d_model", "dot_unscaled", "attn_logit_max") / growth(width, "d_model", "dot", "attn_logit_max")
    assert 0.7 < ratio < 1.4
    # Unscaled attention is far sharper at large d_k, while scaled entropy stays near its value.
    assert growth(head, "d_k", "dot_unscaled", "attn_entropy") < 0.7
    assert growth(head, "d_k", "dot", "attn_entropy") > 0.8
    assert growth(width, "d_model", "dot_unscaled", "attn_entropy") > 0.8
    assert np.isfinite(df.grad_norm_attn_qk).all() and (df.grad_norm_attn_qk > 0).all()


def test_sizes_that_do_not_fit_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        attention_scaling.main(["--head-dims", "8,24", "--d-model", "64"])
    assert e.value.code == 2 and "positive divisors of d_model=64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        attention_scaling.main(["--widths", "12", "--d-k", "8"])
