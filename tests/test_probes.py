"""Probes against independent references: dense Jacobians, unscanned loops, explicit path lists."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm import model as model_lib
from jaxnorm import probes, programs
from jaxnorm.attention import attention_weights
from jaxnorm.config import BLOCKS, ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.paths import path_string
from jaxnorm.step import cross_entropy

B, T = 2, 4
TINY = ModelConfig(depth=3, d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_len=T)
ALL_ON = ProbeConfig(amplification=True, spectrum=True, power_iters=100, hutchinson_samples=2000)
ALL_OFF = ProbeConfig(grads=False, activations=False, attention=False, jacobian=False, alignment=False)
# XLA's CPU backend spends seconds optimising tiny programs (threefry alone ~2 s); tests need no speed.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
jacobian_stats = jit(probes.jacobian_stats, static_argnums=(0, 5))  # compiled once per (model, cfg)


@functools.lru_cache(maxsize=None)  # eager init is slow; callers must copy before mutating (jax.tree.map)
def setup(cfg=TINY, seed=0):
    graphdef, params, rest = model_lib.init(cfg, jax.random.key(seed))
    k_in, k_out = jax.random.split(jax.random.key(seed + 100))
    batch = {"inputs": jax.random.randint(k_in, (B, T), 0, cfg.vocab_size),
             "targets": jax.random.randint(k_out, (B, T), 0, cfg.vocab_size),
             "weights": jnp.ones((B, T), jnp.float32)}
    return graphdef, params, rest, batch


def unscanned_stream(graphdef, params, rest, tokens, train=False):
    """Reference: the embedding, then one block at a time from sliced state. Returns (x_0..x_L, layer fns, model)."""
    model = nnx.merge(graphdef, params, rest)
    block_graphdef, block_state = nnx.split(model.encoder.blocks)
    depth = jax.tree.leaves(block_state)[0].shape[0]
    fns = [lambda x, s=jax.tree.map(lambda a: a[l], block_state), l=l:
           nnx.merge(block_graphdef, s)(x, train=train, layer=l)[0] for l in range(depth)]
    xs = [model.embed(tokens)]
    for f in fns:
        xs.append(f(xs[-1]))
    return xs, fns, model


def dense(fn, x):
    """fn's Jacobian at x as a [k, k] matrix, k = x.size."""
    return jax.jacfwd(lambda v: fn(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))


@functools.partial(jit, static_argnums=0)
def dense_reference(graphdef, params, rest, tokens):
    """Per-layer dense Jacobians [L, k, k], the end-to-end one [k, k] and the stream, by an unrolled loop."""
    xs, fns, _ = unscanned_stream(graphdef, params, rest, tokens)

    def stack(x):
        for f in fns:
            x = f(x)
        return x
    return jnp.stack([dense(f, xs[l]) for l, f in enumerate(fns)]), dense(stack, xs[0]), jnp.stack(xs)


# --- Jacobian estimators vs dense Jacobians ----------------------------------------------------------

@pytest.mark.parametrize("block", ["pre_ln", "post_ln", "mix_ln"])
def test_jacobian_estimators_match_dense(block):
    cfg = TINY.replace(block=block)
    graphdef, params, rest, batch = setup(cfg)
    out = jacobian_stats(graphdef, params, rest, batch["inputs"], jax.random.key(1), ALL_ON)
    J_LxKxK, J_e2e, xs = jax.tree.map(lambda a: np.asarray(a, np.float64),
                                      dense_reference(graphdef, params, rest, batch["inputs"]))
    N, dim = ALL_ON.hutchinson_samples, xs[0].size
    for l, J in enumerate(J_LxKxK):
        sv = np.linalg.svd(J, compute_uv=False)
        np.testing.assert_allclose(out["jac_spectral"][l], sv[0], rtol=1e-2, err_msg=f"layer {l}")
        # Hutchinson: est² · dim estimates ‖J‖_F²; single-probe variance 2(‖A‖_F² − Σ A_ii²), A = JᵀJ.
        A = J.T @ J
        se = math.sqrt(2 * (np.sum(A ** 2) - np.sum(np.diag(A) ** 2)) / N)
        exact = np.sum(J ** 2)
        assert se < 0.05 * exact  # the tolerance is tight enough to catch a wrong normalisation
        assert abs(float(out["jac_frobenius"][l]) ** 2 * dim - exact) < 5 * se, (l, out["jac_frobenius"][l])
    sv = np.linalg.svd(J_e2e, compute_uv=False)  # end to end: x_0 ↦ x_L composed in a Python loop
    np.testing.assert_allclose(out["jac_end_to_end"], sv[0], rtol=1e-2)
    np.testing.assert_allclose(out["jac_singular_values"], sv, rtol=1e-3, atol=1e-5)
    assert out["jac_singular_values"].shape == (dim,)


@pytest.mark.parametrize("block", ["pre_ln", "post_ln"])
def test_lanczos_against_power_iteration_and_dense(block):
    """Both spectral methods from the same start (the draw does not depend on the method), against σ₁ of the
    dense Jacobians. Lanczos after k products maximises the Rayleigh quotient over the Krylov space that
    holds power iteration's vector after k − 1 steps, so it is never below that estimate and never above σ₁;
    and 10 Lanczos steps (the default) are closer to σ₁ than 20 power-iteration steps."""
    graphdef, params, rest, batch = setup(TINY.replace(block=block))
    J_LxKxK, J_e2e, _ = dense_reference(graphdef, params, rest, batch["inputs"])
    sigma = {"jac_spectral": np.linalg.svd(np.asarray(J_LxKxK, np.float64), compute_uv=False)[:, 0],
             "jac_end_to_end": np.linalg.svd(np.asarray(J_e2e, np.float64), compute_uv=False)[0]}

    def estimate(method, steps):
        cfg = ProbeConfig(spectral_method=method, power_iters=steps, hutchinson_samples=1)
        out = jacobian_stats(graphdef, params, rest, batch["inputs"], jax.random.key(1), cfg)
        return {k: np.asarray(out[k], np.float64) for k in sigma}

    lanczos, power_before, power_20 = estimate("lanczos", 10), estimate("power", 9), estimate("power", 20)
    for k, s in sigma.items():
        assert np.all(lanczos[k] <= s * (1 + 1e-5)), (k, lanczos[k], s)
        assert np.all(lanczos[k] >= power_before[k] * (1 - 1e-5)), (k, lanczos[k], power_before[k])
        assert np.all(s - lanczos[k] <= s - power_20[k] + 1e-5 * s), (k, lanczos[k], power_20[k], s)
        np.testing.assert_allclose(lanczos[k], s, rtol=2e-2, err_msg=k)
        np.testing.assert_allclose(power_20[k], s, rtol=2e-2, err_msg=k)  # power iteration itself vs dense


def test_lanczos_is_exact_on_an_invariant_space():
    """J = c·Q (Q orthogonal): JᵀJ = c²I, the recurrence breaks down after one step and must read c, not a
    division by a rounding-level residual; a rank-one J (one nonzero singular value) likewise."""
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(24, 24)))
    u, w = np.random.default_rng(1).normal(size=(2, 24))
    for J, expected in [(3.0 * Q, 3.0), (np.outer(u, w), np.linalg.norm(u) * np.linalg.norm(w))]:
        J = jnp.asarray(J, jnp.float32)
        got = probes.lanczos_spectral_norm(lambda v: J @ v, lambda y: J.T @ y, jnp.ones(24), 10)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e25])
def test_norms_match_float64_at_every_scale(scale):
    """`probes.norm` and the per-layer group norms against float64 numpy, from gradients of ordinary size down
    to 1e-30 (the first layers of a deep Post-LN stack after training), where a plain float32 √Σx² reads 0
    (every square is below float32's range), and up to 1e25, where it reads Inf."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, 7)) * scale).astype(np.float32)
    ref = lambda a, axes=None: np.sqrt(np.sum(np.asarray(a, np.float64) ** 2, axis=axes))  # noqa: E731
    np.testing.assert_allclose(probes.norm(jnp.asarray(x)), ref(x), rtol=1e-6)
    np.testing.assert_allclose(probes.norm(jnp.asarray(x), (1, 2)), ref(x, (1, 2)), rtol=1e-6)
    tree = {"encoder": {"blocks": {"mlp": {"fc2": {"kernel": jnp.asarray(x)}},
                                   "attn": {"query": {"kernel": jnp.asarray(x[:, :2] * 3)}}}}}
    got = probes.group_norms(tree)
    np.testing.assert_allclose(got["mlp_out"], ref(x, (1, 2)), rtol=1e-6)
    np.testing.assert_allclose(got["all"], np.sqrt(ref(x, (1, 2)) ** 2 + ref(x[:, :2] * 3.0, (1, 2)) ** 2), rtol=1e-6)
    assert np.all(np.asarray(got["all"]) > 0) and np.all(np.isfinite(got["all"]))
    np.testing.assert_array_equal(got["norm"], 0.0)  # a group without leaves


def test_norm_keeps_zeros_infs_and_nans():
    x = jnp.zeros((2, 3)).at[1, 0].set(jnp.inf)
    np.testing.assert_array_equal(probes.norm(x, 1), [0.0, np.inf])
    assert np.isnan(probes.norm(x.at[0, 1].set(jnp.nan)))


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_spectral_and_frobenius_estimates_of_a_tiny_jacobian(method):
    """J = c·A with c = 1e-25 (the end-to-end Jacobian of a deep Post-LN stack after training is ~1e-28):
    JᵀJv ~ 1e-50 is below float32's range, yet the estimates must be c times those of A (which a float64 SVD
    and Frobenius norm check)."""
    A = np.random.default_rng(2).normal(size=(24, 24)).astype(np.float32)
    signs = jnp.asarray(np.sign(np.random.default_rng(3).normal(size=(400, 24))), jnp.float32)
    A64 = A.astype(np.float64)
    sigma_1 = np.linalg.svd(A64, compute_uv=False)[0]

    def estimates(c):
        J = jnp.asarray(A) * jnp.float32(c)
        spectral = probes.SPECTRAL_NORMS[method](lambda v: J @ v, lambda y: J.T @ y, jnp.ones(24), 24)
        return np.asarray([spectral, probes.hutchinson_frobenius(lambda v: J @ v, signs)], np.float64)

    plain, tiny = estimates(1.0), estimates(1e-25)
    assert plain[0] <= sigma_1 * (1 + 1e-5)
    np.testing.assert_allclose(plain[0], sigma_1, rtol=2e-2)
    np.testing.assert_allclose(plain[1], np.linalg.norm(A64) / np.sqrt(24), rtol=0.1)
    np.testing.assert_allclose(tiny, 1e-25 * plain, rtol=1e-4)


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(block="mix_ln", depth=4, mix_ln_alpha=0.5)])
def test_residual_stream_matches_loop(cfg):
    """The probes' stream equals a loop over the model's blocks, and its end-to-end map ends where the model's
    encoder does (Mix-LN: the probes' layer maps must know each layer's index)."""
    graphdef, params, rest, batch = setup(cfg)
    x0, xs_L, _, _ = probes.residual_stream(graphdef, params, rest, batch["inputs"])
    ref, _, model = unscanned_stream(graphdef, params, rest, batch["inputs"])
    np.testing.assert_allclose(x0, ref[0], rtol=1e-6)
    np.testing.assert_allclose(xs_L, np.stack(ref[:-1]), rtol=1e-5, atol=1e-6)
    stack_fn, _ = probes.end_to_end_map(graphdef, params, rest, batch["inputs"])
    encoded, _ = model.encoder(model.embed(batch["inputs"]), train=False)
    np.testing.assert_allclose(stack_fn(x0), encoded, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[-1], encoded, rtol=1e-5, atol=1e-6)


def test_jacobian_families_and_seeds():
    graphdef, params, rest, batch = setup()
    key = jax.random.key(3)
    only_jac = ProbeConfig(power_iters=5, hutchinson_samples=4)
    def keys(cfg):
        return set(jax.eval_shape(lambda: probes.jacobian_stats(graphdef, params, rest, batch["inputs"], key, cfg)))
    assert keys(only_jac) == {"jac_spectral", "jac_frobenius", "jac_end_to_end"}
    assert keys(only_jac.replace(jacobian=False, spectrum=True)) == {"jac_singular_values"}
    assert keys(only_jac.replace(jacobian=False)) == set()
    # vmap over seeds == one seed at a time, and the program is cached.
    seeds = [setup(seed=s)[1:3] for s in (0, 1)]
    p_S, r_S = jax.tree.map(lambda *a: jnp.stack(a), *[s[0] for s in seeds]), jax.tree.map(
        lambda *a: jnp.stack(a), *[s[1] for s in seeds])
    both = probes.jacobian_stats_seeds(graphdef, p_S, r_S, batch["inputs"], key, only_jac)
    for s, (p, r) in enumerate(seeds):
        one = jacobian_stats(graphdef, p, r, batch["inputs"], key, only_jac)
        for k in one:
            np.testing.assert_allclose(both[k][s], one[k], rtol=1e-4, err_msg=k)
    before = programs.cached_keys("jacobian")
    probes.jacobian_stats_seeds(graphdef, p_S, r_S, batch["inputs"], key, only_jac)
    assert programs.cached_keys("jacobian") == before and len(before) >= 1
    # Unrolling the end-to-end scans (the GPU's default) is a speed choice: the same values, with a
    # remainder (2 into 3 layers) and past the depth (4).
    for unroll in (2, 4):
        unrolled = probes.jacobian_stats_seeds(graphdef, p_S, r_S, batch["inputs"], key, only_jac, unroll=unroll)
        for k in both:
            np.testing.assert_allclose(unrolled[k], both[k], rtol=1e-5, err_msg=f"{k}, unroll {unroll}")


# --- gradient norms by group vs explicit path lists ----------------------------------------------------

def _leaves(modules, names=("kernel", "bias")):
    return {f"{m}/{n}" for m in modules for n in names}


NORM_MODS = ("norm1", "norm2", "attn/q_norm", "attn/k_norm", "mlp/mid_norm", "norm_attn_out")
QKVO_MLP = {"attn_qk": _leaves(("attn/query", "attn/key")), "attn_vo": _leaves(("attn/value", "attn/out")),
            "mlp_in": _leaves(("mlp/fc1",)), "mlp_out": _leaves(("mlp/fc2",))}
# Per config: each group's block leaves (paths under encoder/blocks) written out by hand, plus those in `all` only.
GROUP_CASES = {
    ("normformer", "qk_norm"): dict(QKVO_MLP, norm=_leaves(NORM_MODS, ("scale", "bias")), other={"attn/head_scale"}),
    ("rezero", "sigma_reparam"): dict(QKVO_MLP, norm=set(), other={
        "rezero_alpha", "attn/gamma_query", "attn/gamma_key", "attn/gamma_value", "attn/gamma_out"}),
    ("admin", "cosine"): dict(QKVO_MLP, norm=_leaves(("norm1", "norm2"), ("scale", "bias")), other={"admin_omega", "attn/logit_scale"}),
}


@pytest.mark.parametrize("block,attention", list(GROUP_CASES))
def test_group_norms_match_per_layer_slices(block, attention):
    cfg = TINY.replace(block=block, attention=attention)
    graphdef, params, rest, batch = setup(cfg)
    def loss(p):
        logits, _, _ = model_lib.apply(graphdef, p, rest, batch["inputs"], train=True)
        return cross_entropy(logits, batch, 0.0)[0]
    grads = jit(jax.grad(loss))(params)
    updates = jax.tree.map(lambda g: -0.1 * g, grads)
    stats = probes.layer_stats(params, grads, updates, None, {}, ProbeConfig(
        activations=False, attention=False, alignment=False))

    prefix = "encoder/blocks/"
    leaves = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(grads)}
    pleaves = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    block_paths = {k[len(prefix):] for k in leaves if k.startswith(prefix)}
    expected = GROUP_CASES[(block, attention)]
    assert set().union(*expected.values()) == block_paths  # the hand lists cover every leaf exactly
    assert sum(len(v) for v in expected.values()) == len(block_paths)  # ... and are disjoint
    for l in range(cfg.depth):
        sq = {g: sum(float(np.sum(leaves[prefix + p][l].astype(np.float64) ** 2)) for p in paths)
              for g, paths in expected.items()}
        for g in ("attn_qk", "attn_vo", "mlp_in", "mlp_out", "norm"):
            np.testing.assert_allclose(stats[f"grad_norm/{g}"][l], math.sqrt(sq[g]), rtol=1e-5, atol=1e-12,
                                       err_msg=f"{g} layer {l}")
        np.testing.assert_allclose(stats["grad_norm/all"][l], math.sqrt(sum(sq.values())), rtol=1e-5)
        p_sq = sum(float(np.sum(pleaves[prefix + p][l].astype(np.float64) ** 2)) for p in block_paths)
        np.testing.assert_allclose(stats["param_norm"][l], math.sqrt(p_sq), rtol=1e-5)
        np.testing.assert_allclose(stats["update_ratio"][l], 0.1 * math.sqrt(sum(sq.values()) / p_sq), rtol=1e-5)
    assert np.all(stats["grad_norm/all"] > 0)


def test_first_nonfinite_layer():
    _, params, _, _ = setup()
    assert int(jit(probes.first_nonfinite_layer)(params)) == -1
    bad = jax.tree.map(lambda a: a, params)
    bad["encoder"]["blocks"]["mlp"]["fc2"]["bias"] = bad["encoder"]["blocks"]["mlp"]["fc2"]["bias"].at[2, 0].set(jnp.inf)
    bad["encoder"]["blocks"]["attn"]["query"]["kernel"] = (
        bad["encoder"]["blocks"]["attn"]["query"]["kernel"].at[1, 3, 3].set(jnp.nan))
    assert int(jit(probes.first_nonfinite_layer)(bad)) == 1
    emb_only = jax.tree.map(lambda a: a, params)
    emb_only["token_embed"]["embedding"] = emb_only["token_embed"]["embedding"].at[0, 0].set(jnp.nan)
    assert int(probes.first_nonfinite_layer(emb_only)) == -1


# --- ∂loss/∂x_l from the zero-delta hook vs a direct gradient ---------------------------------------

@pytest.mark.parametrize("block", ["pre_ln", "post_ln"])
def test_act_grad_norm_matches_direct_gradient(block):
    cfg = TINY.replace(block=block)
    graphdef, params, rest, batch = setup(cfg)
    def loss(deltas):
        logits, diags, _ = model_lib.apply(graphdef, params, rest, batch["inputs"], train=True,
                                           deltas_LxBxTxD=deltas)
        return cross_entropy(logits, batch, 0.0)[0], diags
    act_grads, diags = jit(jax.grad(loss, has_aux=True))(jnp.zeros((cfg.depth, B, T, cfg.d_model)))
    stats = probes.layer_stats(params, None, None, act_grads, diags, ProbeConfig(grads=False))

    @jit
    def reference(params):
        xs, fns, model = unscanned_stream(graphdef, params, rest, batch["inputs"], train=True)

        def rest_of_network(x, l):  # layers ≥ l, head and loss, as a function of layer l's input
            for f in fns[l:]:
                x = f(x)
            return cross_entropy(model.unembed(x, train=True), batch, 0.0)[0]
        return [jax.grad(rest_of_network)(xs[l], l) for l in range(cfg.depth)], xs

    grads_x, xs = reference(params)
    for l in range(cfg.depth):
        np.testing.assert_allclose(stats["act_grad_norm"][l], np.linalg.norm(np.asarray(grads_x[l])), rtol=1e-4)
        np.testing.assert_allclose(stats["act_rms"][l], np.sqrt(np.mean(np.asarray(xs[l]) ** 2)), rtol=1e-5)
    assert stats["branch_ratio"].shape == (cfg.depth, 2)


# --- attention entropy -----------------------------------------------------------------------------

def test_attention_entropy_by_hand():
    logits = jnp.array([[[[0.0, math.log(3.0)], [1.0, 1.0]]]])  # B=1, H=1, T=2
    h_row0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    _, diag = attention_weights(logits)
    np.testing.assert_allclose(diag["attn_entropy"], [(h_row0 + math.log(2.0)) / 2], rtol=1e-6)
    np.testing.assert_allclose(diag["attn_logit_max"], [math.log(3.0)], rtol=1e-6)
    _, diag = attention_weights(logits, jnp.tril(jnp.ones((2, 2), bool)))  # row 0 sees one key: entropy 0
    np.testing.assert_allclose(diag["attn_entropy"], [math.log(2.0) / 2], rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_uniform_attention_entropy_through_model(causal):
    cfg = TINY.replace(causal=causal)
    graphdef, params, rest, batch = setup(cfg)
    params = jax.tree.map(lambda a: a, params)
    q = params["encoder"]["blocks"]["attn"]["query"]
    q["kernel"], q["bias"] = jnp.zeros_like(q["kernel"]), jnp.zeros_like(q["bias"])
    _, diags, _ = model_lib.apply(graphdef, params, rest, batch["inputs"], train=False)
    stats = probes.layer_stats(params, None, None, None, diags, ProbeConfig(grads=False, activations=False,
                                                                          alignment=False))
    expected = np.mean(np.log(np.arange(1, T + 1))) if causal else math.log(T)
    np.testing.assert_allclose(stats["attn_entropy"], np.full((cfg.depth, cfg.num_heads), expected), rtol=1e-5)
    np.testing.assert_allclose(stats["attn_logit_max"], 0.0, atol=1e-6)


@pytest.mark.parametrize("block", ["pre_ln", "post_ln"])
def test_stack_output_stats_match_direct_gradient(block):
    """The train step's `out_act_grad_norm` and `out_act_rms` against plain jax.grad of the loss (z-loss
    included) with respect to x_L, the unscanned stack's output, before the final norm and head."""
    from jaxnorm.step import build_step_fns
    cfg = TINY.replace(block=block)
    train_cfg = TrainConfig(task="copy", steps=4, batch_size=B, seq_len=T, z_loss=1e-2, progress=False)
    fns = build_step_fns(cfg, OptimConfig(), train_cfg, ProbeConfig(jacobian=False))
    state = fns.init_state(jax.random.key(1), {"lr": 1e-3, "weight_decay": 0.0, "clip_value": 1.0})
    _, _, _, batch = setup(cfg)
    _, metrics = jit(fns.train_step, static_argnums=3)(state, batch, jax.random.key(2), True)
    layers = metrics["layers"]
    assert layers["out_act_grad_norm"].shape == () and layers["out_act_rms"].shape == ()
    assert layers["act_grad_norm"].shape == (cfg.depth,)  # the per-layer metrics keep their shape

    @jit
    def reference(params, rest):
        xs, _, model = unscanned_stream(fns.graphdef, params, rest, batch["inputs"], train=True)
        x_L = xs[-1]
        g = jax.grad(lambda x: cross_entropy(model.unembed(x, train=True), batch, train_cfg.z_loss)[0])(x_L)
        return jnp.linalg.norm(g), jnp.sqrt(jnp.mean(jnp.square(x_L)))

    grad_norm, rms = reference(state.params, state.rest)
    np.testing.assert_allclose(layers["out_act_grad_norm"], grad_norm, rtol=1e-4)
    np.testing.assert_allclose(layers["out_act_rms"], rms, rtol=1e-5)
    # x_L is a new point, not the last layer's input x_{L-1}.
    assert abs(float(grad_norm) / float(layers["act_grad_norm"][-1]) - 1) > 1e-3


# --- every block variant; amplification ---------------------------------------------------------------

FAST_BLOCKS = ("pre_ln", "post_ln", "rezero", "admin", "normformer")  # the rest only with -m slow: ~5 s each on CPU


@pytest.mark.parametrize("block", [b if b in FAST_BLOCKS else pytest.param(b, marks=pytest.mark.slow) for b in BLOCKS])
def test_probes_finite_for_every_block(block):
    cfg = TINY.replace(block=block, depth=2)
    graphdef, params, rest, batch = setup(cfg)
    probe_cfg = ProbeConfig(spectrum=True, power_iters=3, hutchinson_samples=2)

    @jit
    def everything(params, rest, batch):
        def loss(p, deltas):
            logits, diags, _ = model_lib.apply(graphdef, p, rest, batch["inputs"], train=True, deltas_LxBxTxD=deltas)
            return cross_entropy(logits, batch, 0.0)[0], diags
        (grads, act_grads), diags = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            params, jnp.zeros((cfg.depth, B, T, cfg.d_model)))
        updates = jax.tree.map(lambda g: -1e-2 * g, grads)
        new_params = jax.tree.map(jnp.add, params, updates)
        return (probes.layer_stats(params, grads, updates, act_grads, diags, probe_cfg),
                probes.jacobian_stats(graphdef, params, rest, batch["inputs"], jax.random.key(0), probe_cfg),
                probes.amplification(graphdef, params, new_params, rest, batch["inputs"]))

    layers, jac, amp = everything(params, rest, batch)
    assert set(layers) == {f"grad_norm/{g}" for g in probes.GROUPS} | {
        "param_norm", "update_ratio", "act_grad_norm", "act_rms", "branch_ratio", "attn_entropy",
        "attn_logit_max", "token_alignment", "rank1_residual"}
    assert set(jac) == {"jac_spectral", "jac_frobenius", "jac_end_to_end", "jac_singular_values"}
    for name, v in {**layers, **jac, "amplification": amp}.items():
        assert np.all(np.isfinite(v)), (block, name, v)
        if name not in ("jac_singular_values", "amplification"):
            assert v.ndim == 0 if name == "jac_end_to_end" else v.shape[0] == cfg.depth, (name, v.shape)


@pytest.mark.parametrize("variant", [dict(attention="sigma_reparam"), dict(norm="batchnorm")])
def test_jacobian_probes_with_non_param_state(variant):
    """Blocks whose `rest` holds state (σReparam's u, v; BatchNorm's running statistics) are probed in
    eval mode, which reads that state and must leave it alone."""
    graphdef, params, rest, batch = setup(TINY.replace(**variant))
    cfg = ProbeConfig(power_iters=3, hutchinson_samples=2)
    out = jacobian_stats(graphdef, params, rest, batch["inputs"], jax.random.key(0), cfg)
    assert all(np.all(np.isfinite(v)) for v in out.values()) and out["jac_spectral"].shape == (TINY.depth,)
    assert np.isfinite(probes.amplification(graphdef, params, params, rest, batch["inputs"]))


def test_amplification():
    graphdef, params, rest, batch = setup()
    tokens = batch["inputs"]
    assert float(probes.amplification(graphdef, params, params, rest, tokens)) == 0.0
    doubled = jax.tree.map(lambda a: a, params)
    doubled["head"]["kernel"] = 2.0 * params["head"]["kernel"]  # head bias is 0 at init: logits double
    np.testing.assert_allclose(probes.amplification(graphdef, params, doubled, rest, tokens), 1.0, rtol=1e-5)


# --- probes are observers: they must not change training -------------------------------------------------

def test_probed_step_equals_bare_step():
    """The real caller: step.train_step with probes gives the same loss and parameters as without."""
    from jaxnorm import step
    cfg = TINY.replace(attention="sigma_reparam")  # non-param state is written back in train mode
    optim_cfg = OptimConfig(schedule="constant", lr=1e-2)
    fns = step.build_step_fns(cfg, optim_cfg, TrainConfig(seq_len=T), ProbeConfig())
    state = fns.init_state(jax.random.key(0), step.run_hparams(optim_cfg))
    batch = setup(cfg)[3]
    run = jit(fns.train_step, static_argnums=3)
    probed, m_probed = run(state, batch, jax.random.key(0), True)
    bare, m_bare = run(state, batch, jax.random.key(0), False)
    layers = m_probed.pop("layers")
    assert layers["grad_norm/all"].shape == (cfg.depth,) and np.all(layers["update_ratio"] > 0)
    for k in m_bare:
        np.testing.assert_array_equal(m_probed[k], m_bare[k], err_msg=k)
    jax.tree.map(np.testing.assert_array_equal, (probed.params, probed.rest), (bare.params, bare.rest))


def test_probes_do_not_change_trajectory():
    pytest.importorskip("jaxnorm.data", reason="jaxnorm.data not written yet")
    from jaxnorm.trainer import train
    args = (ModelConfig(depth=2, d_model=16, num_heads=2, d_ff=32), OptimConfig(lr=3e-3),
            TrainConfig(task="copy", steps=10, seq_len=8, batch_size=8, log_every=5, eval_every=5,
                        progress=False))
    on = train(*args, ALL_ON.replace(probe_every=5, power_iters=3, hutchinson_samples=2))
    off = train(*args, ALL_OFF)
    np.testing.assert_array_equal(on.metrics["loss"], off.metrics["loss"])
    assert "grad_norm/all" in on.layers and "jac_spectral" in on.jacobian
    assert not off.layers and not off.jacobian
