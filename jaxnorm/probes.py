"""Per-layer measurements of gradient flow: what every figure of the project is drawn from.

Two kinds of probe, both per seed (callers vmap over seeds) and jit-safe (no host transfers, no Python
loop over layers):

- Cheap reductions of tensors the train step already has (`layer_stats`): parameter-gradient norms by
  group, parameter norms, update ratios, ‖∂loss/∂x_l‖ from the zero-delta hook, and the diagnostics each
  block returns (residual RMS, branch ratios, attention entropy / max logit, token alignment).
- Jacobian probes on a fixed probe batch in eval mode (`jacobian_stats`): ‖∂x_{l+1}/∂x_l‖₂ by Lanczos
  (default) or power iteration on JᵀJ, ‖∂x_{l+1}/∂x_l‖_F/√dim by Hutchinson's estimator, and the
  end-to-end ‖∂x_L/∂x_0‖₂. They cost `power_iters` products JᵀJv (resp. `hutchinson_samples` Jacobian-
  vector products) per layer, so the loop runs them only every `probe_every` steps.

Every per-layer statistic is a reduction of a stacked [L, ...] tensor over every axis but 0. Parameter
groups come from tree paths (`paths.path_names`), never from a per-leaf list.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm import model as model_lib
from jaxnorm import programs
from jaxnorm.config import ProbeConfig
from jaxnorm.metrics import GROUPS
from jaxnorm.paths import path_names

# Sub-module name -> group. Leaves under none of these and under no norm (rezero_alpha, admin_omega,
# σReparam's gamma_*, cosine attention's logit_scale) are counted in `all` only.
_SUBMODULE_GROUP = {"query": "attn_qk", "key": "attn_qk", "value": "attn_vo", "out": "attn_vo",
                    "fc1": "mlp_in", "fc2": "mlp_out"}  # mlp_out = W2, the matrix of Xiong et al. 2020 Fig. 3
_TINY = 1e-12  # guards ratios whose denominator can be exactly zero (a zero update, J v = 0)


# --- parameter-tree reductions ------------------------------------------------------------------------

def leaf_group(names: tuple[str, ...]) -> str | None:
    """The named group of a block leaf from its path names, or None if it belongs to `all` only.

    "norm" anywhere in the path wins first, so `attn/q_norm/scale` and `mlp/mid_norm/scale` count as norm
    parameters, not attention or MLP ones. The leaf's own name (kernel, bias, ...) is not a sub-module."""
    if any("norm" in n for n in names):
        return "norm"
    for n in names[:-1]:
        if n in _SUBMODULE_GROUP:
            return _SUBMODULE_GROUP[n]
    return None


def _block_leaves(tree: Any) -> list[tuple[tuple[str, ...], jax.Array]]:
    """(path names, leaf) of every stacked block leaf: those with a leading layer axis L."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = path_names(path)
        if "blocks" in names:
            out.append((names, leaf))
    return out


def _sq_per_layer(x_LxN: jax.Array) -> jax.Array:
    x = x_LxN.astype(jnp.float32)
    return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """‖x‖₂ over `axis` (default all), in float32, exact to rounding down to float32's smallest normal number.

    A plain √Σx² loses every entry below ~1e-19: its square is below float32's range, and XLA flushes it to
    zero. The first layers of a deep Post-LN stack after training have gradients of 1e-29 and less, whose
    plain norm reads exactly 0. So x is divided by its largest |entry| before squaring (LAPACK's snrm2
    scales the same way). A NaN anywhere gives NaN, an Inf (and no NaN) gives Inf, all zeros give 0."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim)) if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
    big = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    scale = jnp.where((big > 0) & jnp.isfinite(big), big, 1.0)  # Inf or NaN: unscaled, so they propagate
    return jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=axes)) * jnp.squeeze(scale, axes)


def _norm_per_layer(x_LxN: jax.Array) -> jax.Array:
    """‖x_l‖₂ [L] over every axis but the first (`norm`: no underflow)."""
    return norm(x_LxN, tuple(range(1, x_LxN.ndim)))


def _joint_norm(norms: list[jax.Array]) -> jax.Array:
    """The norm of several tensors together, from their norms (elementwise over the layer axis)."""
    return norm(jnp.stack(norms), 0)


def group_norms(tree: Any) -> dict[str, jax.Array]:
    """‖·‖₂ per layer [L] of each parameter group in GROUPS (a group with no leaves gives zeros)."""
    leaves = _block_leaves(tree)
    L = leaves[0][1].shape[0]
    per_group: dict[str, list[jax.Array]] = {g: [] for g in GROUPS}
    for names, leaf in leaves:
        n_L = _norm_per_layer(leaf)
        per_group["all"].append(n_L)
        g = leaf_group(names)
        if g is not None:
            per_group[g].append(n_L)
    return {g: _joint_norm(n) if n else jnp.zeros((L,), jnp.float32) for g, n in per_group.items()}


def per_layer_norm(tree: Any) -> jax.Array:
    """‖θ_l‖₂ [L]: the norm of all block leaves of layer l together."""
    return _joint_norm([_norm_per_layer(leaf) for _, leaf in _block_leaves(tree)])


def squared_norms(tree: Any) -> tuple[jax.Array, jax.Array]:
    """(Σ of squares per layer [L] over the block leaves, Σ of squares of every other leaf): one pass over
    the tree from which the global norm, its finiteness and the first bad layer all follow."""
    sq_L = sum(_sq_per_layer(leaf) for _, leaf in _block_leaves(tree))
    others = [jnp.sum(jnp.square(leaf.astype(jnp.float32))) for path, leaf in
              jax.tree_util.tree_flatten_with_path(tree)[0] if "blocks" not in path_names(path)]
    return sq_L, sum(others, jnp.zeros((), jnp.float32))


def first_bad_layer(sq_L: jax.Array) -> jax.Array:
    """int32 index of the first layer whose sum of squares (`squared_norms`) is non-finite, −1 if none.
    A NaN/Inf anywhere in a layer's leaves makes its sum non-finite, so one pass of squared norms gives the
    global norm, its finiteness and this layer together."""
    bad_L = ~jnp.isfinite(sq_L)
    return jnp.where(jnp.any(bad_L), jnp.argmax(bad_L), -1).astype(jnp.int32)


def first_nonfinite_layer(grads: Any) -> jax.Array:
    """int32 index of the first layer whose block gradients hold a NaN/Inf, −1 if none (or if only
    non-block leaves such as the embedding are non-finite)."""
    return first_bad_layer(squared_norms(grads)[0])


def layer_stats(params: Any, grads: Any, updates: Any, act_grads_LxBxTxD: jax.Array | None,
                diags: dict[str, jax.Array], cfg: ProbeConfig,
                out_act_grad_BxTxD: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-layer probes of one train step; a key is present only when its ProbeConfig family is on.

    grads:       `grad_norm/<group>` [L] ‖∂loss/∂θ_l‖ per group; `param_norm` [L] ‖θ_l‖;
                 `update_ratio` [L] ‖Δθ_l‖/‖θ_l‖ with Δθ the optimizer's update.
    activations: `act_grad_norm` [L] ‖∂loss/∂x_l‖_F over (B, T, D) of the stream entering layer l;
                 `act_rms` [L] RMS of x_l; `branch_ratio` [L, 2] ‖F(x)‖/‖x‖ of the attention/MLP branch;
                 with `out_act_grad_BxTxD` (∂loss/∂x_L) and diags' `out_act_rms`, the stack's output x_L
                 too: `out_act_grad_norm` [] ‖∂loss/∂x_L‖_F and `out_act_rms` [] RMS of x_L.
    attention:   `attn_entropy`, `attn_logit_max` [L, H] (entropy collapse: Zhai et al. 2023; logit
                 growth: Wortsman et al. 2023).
    alignment:   `token_alignment` [L] mean pairwise cosine of tokens and `rank1_residual` [L] distance
                 to the nearest all-tokens-equal matrix (rank collapse: Dong et al. 2021, Noci et al. 2022).
    """
    out: dict[str, jax.Array] = {}
    if cfg.grads:
        out.update({f"grad_norm/{g}": n_L for g, n_L in group_norms(grads).items()})
        param_L = per_layer_norm(params)
        out["param_norm"] = param_L
        out["update_ratio"] = per_layer_norm(updates) / jnp.maximum(param_L, _TINY)
    if cfg.activations:
        chex.assert_rank(act_grads_LxBxTxD, 4)
        out["act_grad_norm"] = _norm_per_layer(act_grads_LxBxTxD)
        out["act_rms"] = diags["act_rms"]
        out["branch_ratio"] = diags["branch_ratio"]
    if cfg.attention:
        out["attn_entropy"] = diags["attn_entropy"]
        out["attn_logit_max"] = diags["attn_logit_max"]
    if cfg.alignment:
        out["token_alignment"] = diags["token_alignment"]
        out["rank1_residual"] = diags["rank1_residual"]
    if out:  # every statistic is per layer: one leading axis L for all
        chex.assert_equal_shape_prefix(list(out.values()), 1)
    if cfg.activations and out_act_grad_BxTxD is not None:
        chex.assert_rank(out_act_grad_BxTxD, 3)
        out["out_act_grad_norm"] = norm(out_act_grad_BxTxD)
        out["out_act_rms"] = diags["out_act_rms"]
    return out


# --- the residual stream and its Jacobians ------------------------------------------------------------

def residual_stream(graphdef: nnx.GraphDef, params: Any, rest: Any, tokens_BxT: jax.Array,
                    active_depth: jax.Array | None = None) -> tuple[jax.Array, jax.Array, Callable, Any]:
    """Eval-mode stream: (x_0, inputs x_LxBxTxD of every layer, block_fn, stacked block state).

    `block_fn(state_l, x)` = block_l(x)[0] is the map x_l ↦ x_{l+1} whose Jacobian the probes measure;
    `state_l` is layer l's slice of the stacked state (its block state and its index l).
    The zero deltas of the train step are omitted: adding zero does not change the map. `active_depth`: a
    padded model's (unbatched), so the layers from it on are skipped (`skipping`), not computed as identities."""
    chex.assert_rank(tokens_BxT, 2)
    model = nnx.merge(graphdef, params, rest)
    x0_BxTxD = model.embed(tokens_BxT)
    block_graphdef, stacked = nnx.split(model.encoder.blocks)
    # Each layer's state carries its index: a block may depend on where it sits (Mix-LN switches on it).
    block_state = (stacked, jnp.arange(model.encoder.depth))

    def block_fn(state_l: Any, x_BxTxD: jax.Array) -> jax.Array:
        params_l, index = state_l
        return nnx.merge(block_graphdef, params_l)(x_BxTxD, train=False, layer=index)[0]

    block_fn = skipping(block_fn, active_depth)
    _, xs_LxBxTxD = jax.lax.scan(lambda x, s: (block_fn(s, x), x), x0_BxTxD, block_state)
    return x0_BxTxD, xs_LxBxTxD, block_fn, block_state


def _linearized(fn: Callable, x: jax.Array) -> tuple[Callable, Callable]:
    """(v ↦ Jv, u ↦ Jᵀu) of fn at x: one linearisation, its transpose reusing the same residuals."""
    _, jvp = jax.linearize(fn, x)
    vjp_tuple = jax.linear_transpose(jvp, x)
    return jvp, lambda u: vjp_tuple(u)[0]


def power_spectral_norm(jvp: Callable, vjp: Callable, v0: jax.Array, iters: int) -> jax.Array:
    """‖J‖₂ by power iteration on JᵀJ (von Mises & Pollaczek-Geiringer 1929): v ← JᵀJv/‖JᵀJv‖, then ‖Jv‖.

    A lower bound whose relative error shrinks like (σ₂/σ₁)^(4k) after k steps (a Rayleigh quotient of the
    symmetric JᵀJ), so clustered top singular values need more steps. Exact from any start when J is a
    multiple of an orthogonal matrix (e.g. the identity of a ReZero block at init).

    Jv is normalised before Jᵀ applies, so no vector is smaller than ~σ: JᵀJv itself (~σ²) would leave
    float32's range for σ below ~1e-19, which the end-to-end Jacobian of a deep Post-LN stack reaches."""
    def step(_, v):
        w = vjp(_unit(jvp(v)))
        return _unit(w)

    v = jax.lax.fori_loop(0, iters, step, _unit(v0))
    return norm(jvp(v))


def _unit(x: jax.Array) -> jax.Array:
    """x / ‖x‖₂, or x itself where ‖x‖ is 0 (a zero vector stays zero)."""
    n = norm(x)
    return x / jnp.where(n > 0, n, 1.0).astype(x.dtype)


def lanczos_spectral_norm(jvp: Callable, vjp: Callable, v0: jax.Array, steps: int) -> jax.Array:
    """‖J‖₂ as √θ, θ the largest Ritz value of JᵀJ on the Krylov space span{v0, JᵀJv0, …, (JᵀJ)^(steps−1)v0}
    (Lanczos 1950; Golub & Van Loan, Matrix Computations, §10.1).

    The same `steps` products JᵀJv as `steps` steps of power iteration, on the same space: power iteration
    keeps only the last vector of it, Lanczos the best one in it, so its estimate is never lower than power
    iteration's after steps − 1 steps (in exact arithmetic) and its error shrinks like the Chebyshev rate
    exp(−4·steps·√gap) instead of (1 − gap)^(2·steps), gap = 1 − σ₂²/σ₁². On the quick preset's model, 10
    Lanczos steps are closer to ‖J‖₂ than 20 power-iteration steps (`scripts/spectral_accuracy.py` measures
    both against dense Jacobians; `tests/test_probes.py` checks the bounds). Still a lower bound up to
    rounding. Without reorthogonalisation (three vectors of memory, whatever `steps`):
    lost orthogonality only repeats converged Ritz values, it does not move the largest one. A breakdown
    (an invariant subspace, e.g. J a multiple of an orthogonal matrix) zeroes the rest of the recurrence.

    The recurrence runs on JᵀJ/s², s = ‖Jv0‖ (fixed at the first product, so the Krylov space is the same),
    and the result is scaled back by s: JᵀJv itself (~σ²) would leave float32's range for σ below ~1e-19,
    which the end-to-end Jacobian of a deep Post-LN stack reaches after training."""
    f32 = jnp.float32
    dot = lambda a, b: jnp.sum(a.astype(f32) * b.astype(f32))  # noqa: E731

    def step(carry, _):
        v, v_prev, beta, s = carry
        u = jvp(v)
        s = jnp.where(s > 0, s, norm(u))  # the first step sets it; 0 only if Jv0 = 0 (then all stays 0)
        inv = (1.0 / jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)).astype(u.dtype)
        w = vjp(u * inv) * inv
        alpha = dot(v, w)
        w = w - (alpha * v + beta * v_prev).astype(w.dtype)
        w = w - (dot(v, w) * v).astype(w.dtype)  # a second pass against v: cancellation in float32
        beta_next = norm(w)
        # Relative breakdown test: a residual at rounding level of JᵀJv means the space is invariant.
        alive = beta_next > 1e-6 * jnp.maximum(jnp.abs(alpha), _TINY)
        beta_next = jnp.where(alive, beta_next, 0.0)
        v_next = jnp.where(alive, w / jnp.maximum(beta_next, _TINY).astype(w.dtype), jnp.zeros_like(w))
        return (v_next, v, beta_next, s), (alpha, beta_next)

    v = _unit(v0)
    (_, _, _, s), (alpha_K, beta_K) = jax.lax.scan(step, (v, jnp.zeros_like(v), f32(0), f32(0)), None,
                                                   length=steps)
    off = beta_K[:-1]
    tridiagonal_KxK = jnp.diag(alpha_K) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(tridiagonal_KxK)[-1], 0.0)) * s


SPECTRAL_NORMS = {"lanczos": lanczos_spectral_norm, "power": power_spectral_norm}


def hutchinson_frobenius(jvp: Callable, probes_NxBxTxD: jax.Array) -> jax.Array:
    """‖J‖_F/√dim by Hutchinson's estimator (Hutchinson 1989): E‖Jv‖² = tr(JᵀJ) = ‖J‖_F² for Rademacher v.

    `probes_NxBxTxD` holds N Rademacher (±1) vectors. Normalised by dim = B·T·D, so an orthogonal J reads 1.
    The mean of ‖Jv‖² is unbiased for ‖J‖_F² with per-probe variance 2(‖JᵀJ‖_F² − Σᵢ(JᵀJ)ᵢᵢ²); its square
    root is slightly biased low (Jensen), negligible once N is more than a few. The mean of squares is taken as
    ‖(‖Jv₁‖, …, ‖Jv_N‖)‖²/N (`norm`: no underflow for a tiny J)."""
    n_N = jax.vmap(lambda v: norm(jvp(v)))(probes_NxBxTxD)
    return norm(n_N) / jnp.sqrt(jnp.float32(probes_NxBxTxD.shape[0] * probes_NxBxTxD[0].size))


def skipping(block_fn: Callable, active_depth: jax.Array | None) -> Callable:
    """`block_fn` that is the identity, computing nothing, at layers ≥ `active_depth` (None: unchanged)."""
    if active_depth is None:
        return block_fn
    return lambda state_l, x: jax.lax.cond(state_l[1] < active_depth, block_fn, lambda s, x: x, state_l, x)


def end_to_end_map(graphdef: nnx.GraphDef, params: Any, rest: Any, tokens_BxT: jax.Array
                   ) -> tuple[Callable, jax.Array]:
    """(x_0 ↦ x_L through the scanned stack in eval mode, x_0 of the probe batch)."""
    x0_BxTxD, _, block_fn, block_state = residual_stream(graphdef, params, rest, tokens_BxT)
    return _stack_fn(block_fn, block_state), x0_BxTxD


def _stack_fn(block_fn: Callable, block_state: Any, unroll: int = 1) -> Callable:
    return lambda x_BxTxD: jax.lax.scan(lambda x, s: (block_fn(s, x), None), x_BxTxD, block_state,
                                        unroll=unroll)[0]


def end_to_end_unroll() -> int:
    """Layers per loop iteration of the end-to-end probe's scans on this backend (same values either way).

    The end-to-end Lanczos runs `power_iters` JᵀJv products through the whole stack, one layer after another:
    most of the probe's kernels. At the quick preset's size a GPU's time there is kernel launches and loop
    overhead, and 4 layers per iteration cut the H100's Jacobian call by 26-29%; on a CPU unrolling measured
    slower (`scripts/bench_jacobian_loops.py` compares them side by side)."""
    return 4 if jax.default_backend() == "gpu" else 1


def end_to_end_jacobian_dense(graphdef: nnx.GraphDef, params: Any, rest: Any, tokens_BxT: jax.Array
                              ) -> jax.Array:
    """Dense ∂x_L/∂x_0 as a [k, k] matrix, k = B·T·D, by `jax.jacfwd`: k JVPs and k² memory, so tiny
    models only (cfg.spectrum)."""
    stack_fn, x0_BxTxD = end_to_end_map(graphdef, params, rest, tokens_BxT)
    shape, k = x0_BxTxD.shape, x0_BxTxD.size
    return jax.jacfwd(lambda x_K: stack_fn(x_K.reshape(shape)).reshape(k))(x0_BxTxD.reshape(k))


def jacobian_stats(graphdef: nnx.GraphDef, params: Any, rest: Any, tokens_BxT: jax.Array, key: jax.Array,
                   cfg: ProbeConfig, unroll: int = 1, active_depth: jax.Array | None = None) -> dict[str, jax.Array]:
    """Jacobian probes of one seed at the eval-mode residual stream of the probe batch; `unroll`: layers per
    iteration of the end-to-end scans (a speed choice, `end_to_end_unroll`).

    jacobian: `jac_spectral` [L] ‖∂x_{l+1}/∂x_l‖₂ (cfg.power_iters steps of cfg.spectral_method, Lanczos
              or power iteration, from a random start); `jac_frobenius` [L] ‖∂x_{l+1}/∂x_l‖_F/√dim
              (Hutchinson, cfg.hutchinson_samples Rademacher probes); `jac_end_to_end` [] ‖∂x_L/∂x_0‖₂
              (the same spectral method through the stack).
              dim = B·T·D: the Jacobian couples all positions (attention) and the whole probe batch.
              σ > 1 per layer compounds into explosion, σ < 1 into vanishing.
    spectrum: `jac_singular_values` [B·T·D] all singular values of ∂x_L/∂x_0, descending (dense; tiny
              models only).
    """
    out: dict[str, jax.Array] = {}
    if cfg.jacobian:
        x0_BxTxD, xs_LxBxTxD, block_fn, block_state = residual_stream(graphdef, params, rest, tokens_BxT,
                                                                      active_depth)
        L, N = xs_LxBxTxD.shape[0], cfg.hutchinson_samples
        # Every random vector from one draw (threefry is slow to compile on CPU): Gaussian power-iteration
        # starts (never orthogonal to the top singular vector, unlike a ±1 start can be), and Rademacher
        # probes as the signs of Gaussians. The end-to-end start comes first and each layer's vectors follow
        # in layer order, so layer l's draws do not depend on L (a padded model's first layers get exactly
        # an unpadded model's: jaxnorm.padding).
        z = jax.random.normal(key, (1 + L * (1 + N), *x0_BxTxD.shape), x0_BxTxD.dtype)
        e2e_start_BxTxD, per_layer = z[0], z[1:].reshape(L, 1 + N, *x0_BxTxD.shape)
        starts_LxBxTxD, signs_LxNxBxTxD = per_layer[:, 0], jnp.sign(per_layer[:, 1:])

        spectral_norm = SPECTRAL_NORMS[cfg.spectral_method]

        def one_layer(state_l, x_BxTxD, v0_BxTxD, signs_NxBxTxD):
            jvp, vjp = _linearized(functools.partial(block_fn, state_l), x_BxTxD)
            return (spectral_norm(jvp, vjp, v0_BxTxD, cfg.power_iters),
                    hutchinson_frobenius(jvp, signs_NxBxTxD))

        per_layer_in = (block_state, xs_LxBxTxD, starts_LxBxTxD, signs_LxNxBxTxD)
        if active_depth is None:
            out["jac_spectral"], out["jac_frobenius"] = jax.vmap(one_layer)(*per_layer_in)
        else:  # a padded model: one layer at a time, the inactive ones skipped (zeros, cut away by padding)
            zero = jnp.zeros((), jnp.float32)
            out["jac_spectral"], out["jac_frobenius"] = jax.lax.map(
                lambda a: jax.lax.cond(a[0][1] < active_depth, lambda a: one_layer(*a), lambda a: (zero, zero), a),
                per_layer_in)
        jvp, vjp = _linearized(_stack_fn(block_fn, block_state, unroll), x0_BxTxD)
        out["jac_end_to_end"] = spectral_norm(jvp, vjp, e2e_start_BxTxD, cfg.power_iters)
    if cfg.spectrum:
        jac_KxK = end_to_end_jacobian_dense(graphdef, params, rest, tokens_BxT).astype(jnp.float32)
        out["jac_singular_values"] = jnp.linalg.svd(jac_KxK, compute_uv=False)  # already descending
    return out


def _jacobian_stats_program(graphdef: nnx.GraphDef, cfg: ProbeConfig, compiler_options: tuple = (),
                            unroll: int = 1) -> Callable:
    """The compiled S-seed Jacobian probes, cached by `jaxnorm.programs` per model structure and probe config;
    called as (params, rest, tokens, key, active_depth)."""
    def build() -> Callable:
        one_seed = lambda p, r, t, k, a: jacobian_stats(graphdef, p, r, t, k, cfg, unroll, a)  # noqa: E731
        return programs.jit(jax.vmap(one_seed, in_axes=(0, 0, None, None, None)),
                            compiler_options=dict(compiler_options) or None, name="jacobian")

    return programs.cached("jacobian", (graphdef, cfg), (compiler_options, unroll), build)


def jacobian_stats_seeds(graphdef: nnx.GraphDef, params: Any, rest: Any, tokens_BxT: jax.Array,
                         key: jax.Array, cfg: ProbeConfig, compiler_options: dict | None = None,
                         unroll: int | None = None, active_depth: jax.Array | None = None) -> dict[str, jax.Array]:
    """`jacobian_stats` for S seeds at once (leading axis S on params/rest; probe batch, key and a padded
    model's active depth shared), compiled once per (graphdef, cfg, compiler_options, unroll); `unroll` None:
    `end_to_end_unroll()`."""
    return jacobian_program(graphdef, cfg, compiler_options, unroll)(params, rest, tokens_BxT, key, active_depth)


def jacobian_program(graphdef: nnx.GraphDef, cfg: ProbeConfig, compiler_options: dict | None = None,
                     unroll: int | None = None) -> Callable:
    """The jitted program `jacobian_stats_seeds` calls, as (params, rest, tokens, key, active_depth): to
    lower and compile it ahead of its first call (jaxnorm.compile_ahead)."""
    options = tuple(sorted((compiler_options or {}).items()))
    unroll = end_to_end_unroll() if unroll is None else unroll
    return _jacobian_stats_program(graphdef, cfg, options, unroll)


def amplification(graphdef: nnx.GraphDef, params: Any, new_params: Any, rest: Any, tokens_BxT: jax.Array,
                  active_depth: jax.Array | None = None) -> jax.Array:
    """‖f(x; θ′) − f(x; θ)‖_F / ‖f(x; θ)‖_F of the eval-mode output logits after one update θ → θ′.

    Liu et al. 2020 ("Understanding the Difficulty of Training Transformers") trace Post-LN instability
    to this output change being amplified by the residual branches' dependency, not to vanishing gradients."""
    logits, _, _ = model_lib.apply(graphdef, params, rest, tokens_BxT, train=False, active_depth=active_depth)
    new_logits, _, _ = model_lib.apply(graphdef, new_params, rest, tokens_BxT, train=False, active_depth=active_depth)
    return norm(new_logits - logits) / jnp.maximum(norm(logits), _TINY)
