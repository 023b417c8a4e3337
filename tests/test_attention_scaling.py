"""experiments.attention_scaling --tiny: without 1/√d_k the logits grow with the head dimension."""

import numpy as np

from experiments import attention_scaling


def test_tiny_unscaled_logits_grow_with_head_dim(tmp_path, capsys):
    assert attention_scaling.main(["--tiny", "--out", str(tmp_path)]) == 0
    assert "dot_unscaled" in capsys.readouterr().out
    assert (tmp_path / "attention_scaling.png").read_bytes()[:4] == b"\x89PNG"
    import pandas as pd

    df = pd.read_csv(tmp_path / "attention_scaling.csv")
    lo, hi = sorted(df.d_k.unique())[0], sorted(df.d_k.unique())[-1]
    at = {(r.attention, r.d_k): r for r in df.itertuples()}

    def growth(form, col):
        return getattr(at[(form, hi)], col) / getattr(at[(form, lo)], col)

    # Logit std ≈ √d_k unscaled (√8 ≈ 2.8 from d_k 4 to 32), ≈ 1 scaled.
    assert growth("dot_unscaled", "attn_logit_max") > 2.0 * growth("dot", "attn_logit_max")
    assert growth("dot_unscaled", "attn_logit_max") > 2.0
    # ... so unscaled attention is far sharper at large d_k, while scaled entropy stays near its value.
    assert at[("dot_unscaled", hi)].attn_entropy < 0.7 * at[("dot_unscaled", lo)].attn_entropy
    assert at[("dot", hi)].attn_entropy > 0.8 * at[("dot", lo)].attn_entropy
    assert np.isfinite(df.grad_norm_attn_qk).all() and (df.grad_norm_attn_qk > 0).all()
