"""Multi-head self-attention in the forms compared by the sweep (config.ATTENTIONS).

One :class:`Attention` module covers every form: they differ only in how the per-head logits are formed
(:meth:`Attention.scores`) and, for σReparam, in how the four projection kernels are used. Projections are
``nnx.Linear(D, D)`` sub-modules named ``query``, ``key``, ``value``, ``out`` (``l2`` has no ``key``: W_K is
tied to W_Q) so init schemes can find and rescale their kernels by name. Softmax, entropy and logits are
float32 whatever the matmul dtype: entropy collapse and logit growth are what the probes look for.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm.config import ATTENTIONS, ModelConfig
from jaxnorm import programs
from jaxnorm.norms import make_norm
from jaxnorm.placements import placement

PROJECTIONS = ("query", "key", "value", "out")
COSINE_INIT_LOGIT_SCALE = math.log(10.0)   # τ = 0.1 at init (Swin V2)
COSINE_MAX_LOGIT_SCALE = math.log(100.0)   # τ ≥ 0.01 (Swin V2 clamps log(1/τ) at log 100)
SIGMA_INIT_ITERS = 50   # power iterations at creation: cheap (D×D matvecs) and makes σ accurate from step 0
_MASKED_LOGIT = -1e30   # finite, so masked entries give p = 0 and p·log p = 0 without NaNs in the backward
_TINY = 1e-12           # guards divisions by ‖·‖ and σ for an all-zero kernel


class PowerIterState(nnx.Variable):
    """Persistent left/right singular-vector estimate of a kernel (σReparam). Not a Param: no gradient,
    no optimizer state; it is carried in the non-param state and updated in train mode."""


def causal_mask(T: int) -> jax.Array:
    """Boolean [T, T] mask, True where query i may attend to key j (j ≤ i)."""
    return nnx.make_causal_mask(jnp.ones((T,)), dtype=jnp.bool_)[0]  # flax's is [1, T, T]: one "head" axis


def attention_weights(logits_BxHxTxT: jax.Array, mask_TxT: jax.Array | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Softmax over keys (float32) and the per-head diagnostics.

    Returns probs_BxHxTxT and {"attn_entropy": [H], "attn_logit_max": [H]}: the entropy −Σ_j p_ij log p_ij
    averaged over batch and queries (masked keys excluded, 0·log 0 = 0), and the max unmasked logit."""
    logits = logits_BxHxTxT.astype(jnp.float32)
    if mask_TxT is not None:
        logits = jnp.where(mask_TxT, logits, _MASKED_LOGIT)
    logp_BxHxTxT = jax.nn.log_softmax(logits, axis=-1)
    probs_BxHxTxT = jnp.exp(logp_BxHxTxT)
    if mask_TxT is not None:
        logp_BxHxTxT = jnp.where(mask_TxT, logp_BxHxTxT, 0.0)
    entropy_H = -jnp.mean(jnp.sum(probs_BxHxTxT * logp_BxHxTxT, axis=-1), axis=(0, 2))
    visible = logits if mask_TxT is None else jnp.where(mask_TxT, logits, -jnp.inf)
    return probs_BxHxTxT, {"attn_entropy": entropy_H, "attn_logit_max": jnp.max(visible, axis=(0, 2, 3))}


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _TINY)


@functools.partial(programs.jit, static_argnames="iters")  # eager callers (init, refresh) compile once
def power_iteration(w_IxO: jax.Array, u_I: jax.Array, v_O: jax.Array, iters: int
                    ) -> tuple[jax.Array, jax.Array]:
    """`iters` steps of u ← Wv/‖Wv‖, v ← Wᵀu/‖Wᵀu‖ on a stop-gradiented W; uᵀWv then estimates σ_max(W)."""
    w_IxO = jax.lax.stop_gradient(w_IxO)

    def step(_, uv):
        u = _normalize(w_IxO @ uv[1])
        return u, _normalize(w_IxO.T @ u)

    return jax.lax.fori_loop(0, iters, step, (u_I, v_O))


class Attention(nnx.Module):
    """Multi-head self-attention, y = out(concat_h softmax(logits_h) V_h), with logits by cfg.attention:

    - ``dot``: QKᵀ/√d_k — Vaswani et al. 2017, "Attention Is All You Need".
    - ``dot_unscaled``: QKᵀ, without the 1/√d_k that keeps logit variance O(1) at init (same paper, §3.2.1).
    - ``cosine``: cos(q_i, k_j)/τ_h, τ_h learned per head, log(1/τ) stored as ``logit_scale`` (init log 10,
      clamped at log 100) — Liu et al. 2022, "Swin Transformer V2".
    - ``qk_norm``: LN(q)·LN(k)ᵀ/√d_k, LayerNorm over d_k (``q_norm``, ``k_norm``, shared by heads) —
      Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion Parameters".
    - ``l2``: −‖q_i − k_j‖²/√d_k with W_K = W_Q (no ``key`` module) — Kim, Papamakarios & Mnih 2021, "The
      Lipschitz Constant of Self-Attention". Simplification: the value path keeps its own W_V rather than
      the paper's W_Q W_Qᵀ W_V/√d_k product.
    - ``sigma_reparam``: dot logits with every projection Ŵ = γ/σ(W)·W, γ a learned scalar (``gamma_<name>``,
      init 1), σ(W) = uᵀWv with u, v (``sigma_u_<name>``, ``sigma_v_<name>``) from power iteration and
      stop-gradiented — Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention
      Entropy Collapse". Train mode runs cfg.sigma_reparam_iters steps and stores u, v; eval reuses them.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"Attention: invalid form {cfg.attention!r}; allowed: {', '.join(ATTENTIONS)}")
        D, H = cfg.d_model, cfg.num_heads
        self.form = cfg.attention
        self.causal = cfg.causal
        self.num_heads = H
        self.head_dim = cfg.head_dim
        self.sigma_iters = cfg.sigma_reparam_iters
        self.dtype = jnp.dtype(cfg.dtype)

        def linear() -> nnx.Linear:
            return nnx.Linear(D, D, use_bias=True, kernel_init=jax.nn.initializers.xavier_uniform(),
                              bias_init=jax.nn.initializers.zeros, dtype=self.dtype,
                              param_dtype=jnp.float32, rngs=rngs)

        self.query = linear()
        if self.form != "l2":
            self.key = linear()
        self.value = linear()
        self.out = linear()

        if self.form == "cosine":
            self.logit_scale = nnx.Param(jnp.full((H,), COSINE_INIT_LOGIT_SCALE, jnp.float32))
        if self.form == "qk_norm":
            self.q_norm = make_norm("layernorm", self.head_dim, cfg, rngs=rngs)
            self.k_norm = make_norm("layernorm", self.head_dim, cfg, rngs=rngs)
        options = placement(cfg.block)  # the block's attention options (jaxnorm.placements)
        if options.attn_head_scale:
            # NormFormer's head-wise scaling of each head's output before the output projection
            # (Shleifer et al. 2021, §3), initialised at 1.
            self.head_scale = nnx.Param(jnp.ones((H,), jnp.float32))
        if options.attn_sub_norm:
            # Magneto's Sub-LN: a norm in front of the output projection (Wang et al. 2022, §2.1).
            self.sub_norm = make_norm(cfg.norm, D, cfg, rngs=rngs)
        if self.form == "sigma_reparam":
            for name in PROJECTIONS:
                w_DxD = getattr(self, name).kernel[...]
                v_D = _normalize(jax.random.normal(rngs.params(), (D,), jnp.float32))
                u_D, v_D = power_iteration(w_DxD, _normalize(w_DxD @ v_D), v_D, SIGMA_INIT_ITERS)
                setattr(self, f"gamma_{name}", nnx.Param(jnp.ones((), jnp.float32)))
                setattr(self, f"sigma_u_{name}", PowerIterState(u_D))
                setattr(self, f"sigma_v_{name}", PowerIterState(v_D))

    def refresh_sigma(self, iters: int = SIGMA_INIT_ITERS) -> None:
        """σReparam: re-run `iters` power iterations on the current kernels and store u, v.

        Call it after kernels are redrawn or rescaled outside training (init schemes): eval mode trusts the
        stored vectors, and stale ones can give σ ≈ 0, i.e. a huge Ŵ. Works on a stacked module (kernels
        with leading layer axes) too. A no-op for the other forms."""
        if self.form != "sigma_reparam":
            return
        for name in PROJECTIONS:
            w = getattr(self, name).kernel[...]
            fn = lambda w_IxO, u_I, v_O: power_iteration(w_IxO, u_I, v_O, iters)  # noqa: E731
            for _ in range(w.ndim - 2):
                fn = jax.vmap(fn)
            u_var, v_var = getattr(self, f"sigma_u_{name}"), getattr(self, f"sigma_v_{name}")
            u_var[...], v_var[...] = fn(w, u_var[...], v_var[...])

    # --- projections ---------------------------------------------------------------------------------

    def _project(self, name: str, x_BxTxD: jax.Array, train: bool) -> jax.Array:
        linear = getattr(self, name)
        if self.form != "sigma_reparam":
            return linear(x_BxTxD)
        w_DxD = linear.kernel[...]
        u_var, v_var = getattr(self, f"sigma_u_{name}"), getattr(self, f"sigma_v_{name}")
        u_D, v_D = u_var[...], v_var[...]
        if train:
            u_D, v_D = power_iteration(w_DxD, u_D, v_D, self.sigma_iters)
            u_var[...], v_var[...] = u_D, v_D
        # u, v are constants here, so ∂σ/∂W = u vᵀ as in the paper.
        sigma = jax.lax.stop_gradient(u_D) @ w_DxD @ jax.lax.stop_gradient(v_D)
        w_hat_DxD = getattr(self, f"gamma_{name}")[...] / jnp.maximum(sigma, _TINY) * w_DxD
        return x_BxTxD.astype(self.dtype) @ w_hat_DxD.astype(self.dtype) + linear.bias[...].astype(self.dtype)

    def _heads(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, _ = x_BxTxD.shape
        return x_BxTxD.reshape(B, T, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def project(self, x_BxTxD: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-head q, k, v, each [B, H, T, d_k] (l2: k is computed with the query projection)."""
        q = self._heads(self._project("query", x_BxTxD, train))
        k = q if self.form == "l2" else self._heads(self._project("key", x_BxTxD, train))
        v = self._heads(self._project("value", x_BxTxD, train))
        return q, k, v

    # --- logits --------------------------------------------------------------------------------------

    def scores(self, q_BxHxTxK: jax.Array, k_BxHxTxK: jax.Array) -> jax.Array:
        """Pre-softmax, unmasked logits_BxHxTxT in float32 for this module's attention form."""
        def dot(a, b):
            return jnp.einsum("bhik,bhjk->bhij", a, b, preferred_element_type=jnp.float32)

        inv_sqrt_dk = 1.0 / math.sqrt(self.head_dim)
        if self.form in ("dot", "sigma_reparam"):
            return dot(q_BxHxTxK, k_BxHxTxK) * inv_sqrt_dk
        if self.form == "dot_unscaled":
            return dot(q_BxHxTxK, k_BxHxTxK)
        if self.form == "qk_norm":
            return dot(self.q_norm(q_BxHxTxK, train=False), self.k_norm(k_BxHxTxK, train=False)) * inv_sqrt_dk
        if self.form == "cosine":
            cos_BxHxTxT = dot(_normalize(q_BxHxTxK.astype(jnp.float32)), _normalize(k_BxHxTxK.astype(jnp.float32)))
            inv_tau_H = jnp.exp(jnp.minimum(self.logit_scale[...], COSINE_MAX_LOGIT_SCALE))
            return cos_BxHxTxT * inv_tau_H[:, None, None]
        if self.form == "l2":
            # ‖q−k‖² = ‖q‖² + ‖k‖² − 2q·k avoids a [B,H,T,T,d_k] difference tensor; rounding can make it
            # slightly negative, and a squared distance is ≥ 0, so clamp.
            q, k = q_BxHxTxK.astype(jnp.float32), k_BxHxTxK.astype(jnp.float32)
            sq_BxHxTxT = (jnp.sum(q * q, -1)[..., :, None] + jnp.sum(k * k, -1)[..., None, :] - 2.0 * dot(q, k))
            return -jnp.maximum(sq_BxHxTxT, 0.0) * inv_sqrt_dk
        raise AssertionError(self.form)  # unreachable: checked in __init__

    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        B, T, D = x_BxTxD.shape
        q, k, v_BxHxTxK = self.project(x_BxTxD, train=train)
        logits_BxHxTxT = self.scores(q, k)
        probs_BxHxTxT, diag = attention_weights(logits_BxHxTxT, causal_mask(T) if self.causal else None)
        ctx_BxHxTxK = jnp.einsum("bhij,bhjk->bhik", probs_BxHxTxT.astype(self.dtype), v_BxHxTxK.astype(self.dtype))
        if hasattr(self, "head_scale"):
            ctx_BxHxTxK = ctx_BxHxTxK * self.head_scale[...][:, None, None].astype(ctx_BxHxTxK.dtype)
        ctx_BxTxD = ctx_BxHxTxK.transpose(0, 2, 1, 3).reshape(B, T, D)
        if hasattr(self, "sub_norm"):
            ctx_BxTxD = self.sub_norm(ctx_BxTxD, train=train).astype(ctx_BxTxD.dtype)
        return self._project("out", ctx_BxTxD, train), diag
