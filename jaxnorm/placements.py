"""The block registry: where each encoder block puts its residual connection and its norms.

One `Placement` per block name says everything the model needs to know about that block: which residual
scheme its forward pass follows, which norm layers it owns, which depth constants and initialisation gains
it uses, and which attention options it turns on. `jaxnorm.blocks.Block`, `jaxnorm.attention.Attention`,
`jaxnorm.init_schemes` and `jaxnorm.model` read these fields and never branch on a block's name, so a new placement
is one entry here (plus its plain-jnp reference in tests/test_blocks.py). `config.BLOCKS` is this
registry's keys.

Depth constants take the depth the model is built for: a Python number (constants stay floats), or a
padded model's traced active depth (`jaxnorm.padding`), so they use only arithmetic that works on both.
This module imports nothing heavy: the command line validates block names without loading JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

# The residual schemes a block's forward pass can follow (x: the stream, F: a branch, N: a norm).
RESIDUAL_SCHEMES = {
    "pre": "x ← x + s·F(N(x)), optional norms after the branch; a final norm closes the stack",
    "post": "x ← N(a·x + F(x)), optionally + x₀ of the block (B2T)",
    "rezero": "x ← x + α_l·F(x), α_l learned, starts at 0",
    "admin": "x ← N(ω⊙x + F(x)), ω per sublayer",
    "none": "x ← N(F(x)): no residual",
    "mix": "post for the first ⌊α·L⌋ layers, pre after",
}


def _floor(v: Any) -> Any:
    """floor for a Python number or a traced array (anything with __floor__ or a `floor` ufunc)."""
    return math.floor(v) if isinstance(v, (int, float)) else v // 1


def deepnorm_alpha(depth: Any) -> Any:
    """DeepNorm's residual multiplier α = (2N)^¼ for an encoder of N layers (Wang et al. 2022, Table 1)."""
    return (2.0 * depth) ** 0.25


def deepnorm_beta(depth: Any) -> Any:
    """DeepNorm's Xavier gain β = (8N)^-¼ of the value, output and FFN weights (Wang et al. 2022, Table 1)."""
    return (8.0 * depth) ** -0.25


def subln_gamma(depth: Any) -> Any:
    """Sub-LN's weight gain γ = √(ln 2N) (Wang et al. 2022, "Magneto")."""
    two_n = 2.0 * depth
    return (math.log(two_n) if isinstance(two_n, float) else _log(two_n)) ** 0.5


def _log(x: Any) -> Any:
    import jax.numpy as jnp  # only reached for a padded model's traced depth

    return jnp.log(x)


def depth_mup_scale(depth: Any, alpha: float) -> Any:
    """depth-μP's branch multiplier L^-α (Yang et al. 2023; Bordelon et al. 2023)."""
    return depth ** -alpha


def mix_ln_post_layers(depth: Any, alpha: float) -> Any:
    """Mix-LN's number of Post-LN layers ⌊α·L⌋ (Li et al. 2024); the remaining layers are Pre-LN."""
    return _floor(alpha * depth)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Everything about one block variant (see the module docstring)."""

    name: str
    update: str                            # the update rule, for documentation
    source: str                            # the paper
    residual: str                          # a key of RESIDUAL_SCHEMES
    norms: bool = True                     # owns norm1/norm2 (False: no normalisation at all; `norm` is ignored)
    final_norm: bool = False               # the stack ends un-normalised: the model adds a norm before the head
    branch_out_norms: bool = False         # a norm after each branch (Sandwich)
    attn_out_norm: bool = False            # a norm after the attention branch only (NormFormer)
    attn_head_scale: bool = False          # a learned scale per head before the output projection (NormFormer)
    attn_sub_norm: bool = False            # a norm before the attention output projection (Sub-LN)
    mlp_mid_norm: bool = False             # a norm after the MLP activation (NormFormer, Sub-LN)
    b2t_skip: bool = False                 # the block input skips to the second norm (B2T)
    # depth constants, functions of the depth the model is built for
    residual_scale: Callable[[Any], Any] | None = None            # a in the post scheme (DeepNorm's α)
    branch_scale: Callable[[Any, float], Any] | None = None       # s in the pre scheme, (depth, α of the config)
    value_gain: Callable[[Any], Any] | None = None                # gain of the value/output/FFN kernels at init
    post_layers: Callable[[Any, float], Any] | None = None        # the mix scheme's Post-LN layer count

    def __post_init__(self) -> None:
        if self.residual not in RESIDUAL_SCHEMES:
            raise ValueError(f"Placement.residual: invalid value {self.residual!r}; allowed: "
                             f"{', '.join(RESIDUAL_SCHEMES)}")
        if self.residual == "mix" and self.post_layers is None:
            raise ValueError(f"Placement {self.name!r}: the mix scheme needs post_layers")


_ENTRIES = (
    Placement("post_ln", "x ← N(x + F(x))", "Vaswani et al. 2017", "post"),
    Placement("pre_ln", "x ← x + F(N(x)); final N after the stack", "Xiong et al. 2020", "pre", final_norm=True),
    Placement("sandwich", "x ← x + N₂(F(N₁(x)))", "Ding et al. 2021 (CogView)", "pre", final_norm=True,
              branch_out_norms=True),
    Placement("deepnorm", "x ← LN(α·x + F(x)), α = (2L)^¼; β = (8L)^-¼ init gain", "Wang et al. 2022 (DeepNet)",
              "post", residual_scale=deepnorm_alpha, value_gain=deepnorm_beta),
    Placement("rezero", "x ← x + α_l·F(x), α_l learned, starts at 0", "Bachlechner et al. 2020", "rezero",
              norms=False),
    Placement("admin", "x ← N(ω⊙x + F(x)), ω profiled", "Liu et al. 2020", "admin"),
    Placement("no_norm", "x ← x + F(x)", "no normalisation", "post", norms=False),
    Placement("no_residual", "x ← N(F(x))", "rank-collapse baseline (Dong et al. 2021)", "none"),
    Placement("b2t", "h = N(x + A(x)); y = N(h + M(h) + x)", "Takase et al. 2022", "post", b2t_skip=True),
    Placement("normformer", "pre_ln + N after attention, head scales, N after the MLP activation",
              "Shleifer et al. 2021", "pre", final_norm=True, attn_out_norm=True, attn_head_scale=True,
              mlp_mid_norm=True),
    Placement("subln", "pre_ln + N before each output projection; γ = √(ln 2L) init gain",
              "Wang et al. 2022 (Magneto)", "pre", final_norm=True, attn_sub_norm=True, mlp_mid_norm=True,
              value_gain=subln_gamma),
    Placement("depth_mup", "x ← x + L^-α·F(N(x))", "Yang et al. 2023; Bordelon et al. 2023", "pre",
              final_norm=True, branch_scale=depth_mup_scale),
    Placement("mix_ln", "Post-LN for the first ⌊αL⌋ layers, Pre-LN after (α = ModelConfig.mix_ln_alpha)",
              "Li et al. 2024 (Mix-LN)", "mix", final_norm=True, post_layers=mix_ln_post_layers),
)

PLACEMENTS: dict[str, Placement] = {p.name: p for p in _ENTRIES}


def placement(block: str) -> Placement:
    """The registry entry of a block name (KeyError naming the allowed ones for an unknown name)."""
    try:
        return PLACEMENTS[block]
    except KeyError:
        raise KeyError(f"block: invalid value {block!r}; allowed: {', '.join(PLACEMENTS)}") from None


def norm_kind(block: str, norm: str) -> str:
    """The norm a block actually uses: `norm`, or "none" for a block without normalisation."""
    return norm if placement(block).norms else "none"
