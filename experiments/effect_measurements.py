"""The measurements behind `python -m experiments.reproduce`: one function per published effect, named as the
effect, taking a `Scale` and returning the numbers its criterion reads (experiments/published_effects.py).

Every number comes from jaxnorm's own code: `jaxnorm.train` (steps = 0: one measured pass at initialisation,
no update), the functional core `init` / `apply`, the residual stream's maps and the probes; seeds are
summarised by `jaxnorm.aggregate`'s one rule and "trained" is `jaxnorm.outcome`'s. Runs that several effects
read (the Pre-LN depth sweep, the language-model runs) are made once per process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from jaxnorm import aggregate, outcome, probes, programs
from jaxnorm import model as model_lib
from jaxnorm.blocks import depth_constants, residual_diagnostics
from jaxnorm.cell_stats import FINAL_WINDOW, summarize_seed
from jaxnorm.config import ModelConfig, OptimConfig, ProbeConfig, TrainConfig
from jaxnorm.maps import stream
from jaxnorm.padding import padded_config
from jaxnorm.paths import path_names
from jaxnorm.placements import placement
from jaxnorm.sweep_spec import preset
from jaxnorm.trainer import compiler_options, train

VOCAB = 32          # random-token inputs of the forward-only measurements
SEQ_LEN = 16        # their sequence length
TOKEN_KEY = 20_200  # the key of those inputs: the same batch for every block, depth and seed
# No probe family: the training-outcome runs need only their losses.
NO_PROBES = ProbeConfig(grads=False, activations=False, attention=False, jacobian=False, alignment=False)
LM_LR = 3e-2        # a high learning rate: 3x the quick preset's, at which its every learnable cell learns
Z_LOSS = 1e-4       # Wortsman et al. 2023's z-loss coefficient
PERTURBATION = 1e-3  # relative size of the random change of every block kernel (Liu et al. 2020's output change)


@dataclasses.dataclass(frozen=True)
class Scale:
    """How large each measurement is: `FULL` for the table, `QUICK` for CI (every effect at a tiny size)."""

    name: str
    d_model: int = 64             # the init-time measurements' model (heads, d_ff below)
    num_heads: int = 4
    d_ff: int = 256
    seeds: int = 8                # models per point of the init-time measurements
    batch_size: int = 16          # mlm sequences per gradient at initialisation
    profile_depth: int = 6        # Xiong et al.'s Fig. 3 model has 6 layers
    depths: tuple[int, ...] = (4, 8, 16, 32, 64)         # the Pre-LN depth sweep at initialisation
    change_depths: tuple[int, ...] = (3, 6, 12, 24, 48)  # output change after a perturbation
    train_depths: tuple[int, int] = (2, 24)              # shallow and deep training runs (DeepNet)
    train_steps: int = 600        # the quick preset's length: a cell that can learn reversal gets to ~100%
    train_seeds: int = 2
    head_dims: tuple[int, ...] = (8, 16, 32, 64)         # head sizes at a fixed width (attention_scaling)
    attn_d_model: int = 64
    attn_depth: int = 2
    collapse_depth: int = 24      # rank collapse: the Pre-LN stack's depth
    isometry_depth: int = 6       # ReZero's end-to-end Jacobian
    lm_depth: int = 4             # the language-model runs (logit growth, z-loss)
    lm_steps: int = 300
    lm_seeds: int = 2
    qk_factors: tuple[float, ...] = (1.0, 4.0, 16.0)   # W_Q, W_K multiplied by each at initialisation


FULL = Scale("full")
QUICK = Scale("quick", d_model=32, num_heads=2, d_ff=64, seeds=2, batch_size=8, profile_depth=3, depths=(2, 4),
              change_depths=(2, 4), train_depths=(2, 4), train_steps=20, train_seeds=1, head_dims=(4, 32),
              attn_d_model=32, attn_depth=1, collapse_depth=6, isometry_depth=2, lm_depth=2, lm_steps=20,
              lm_seeds=1, qk_factors=(1.0, 16.0))


def _geometric(values) -> float:
    return aggregate.seed_aggregate(values, geometric=True).value


def _mean(values) -> float:
    return aggregate.seed_aggregate(values, geometric=False).value


def _model_config(scale: Scale, depth: int, **kw: Any) -> ModelConfig:
    return ModelConfig(depth=depth, d_model=scale.d_model, num_heads=scale.num_heads, d_ff=scale.d_ff,
                       vocab_size=VOCAB, max_len=SEQ_LEN, **kw)


def _tokens(batch: int = 8) -> jax.Array:
    """Uniformly random tokens: distinct inputs, so whatever aligns them is the model."""
    return jax.random.randint(jax.random.key(TOKEN_KEY), (batch, SEQ_LEN), 0, VOCAB)


def _seed_keys(n: int) -> jax.Array:
    return jnp.stack([jax.random.key(s) for s in range(n)])


def _jit(fn):
    """A program that runs a few times: compiled at XLA's lowest CPU level (`trainer.compiler_options`)."""
    return programs.jit(fn, compiler_options=compiler_options(True))


def _map_kernels(params: Any, fn) -> Any:
    """`params` with every stacked block kernel replaced by fn(path names, kernel, leaf index)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        names = path_names(path)
        out.append(fn(names, leaf, i) if "blocks" in names and names[-1] == "kernel" else leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


# --- gradients and the residual stream at initialisation (Xiong et al. 2020) -----------------------------

@functools.lru_cache(maxsize=None)
def _init_layers(block: str, depth: int, scale: Scale) -> dict[str, np.ndarray]:
    """Per-layer probes [S, L] of `scale.seeds` models at initialisation on mlm (one measured pass, no
    update), padded to the largest depth measured so that every depth of a block shares one set of programs."""
    pad = max(*scale.depths, scale.profile_depth)
    h = train(ModelConfig(depth=depth, d_model=scale.d_model, num_heads=scale.num_heads, d_ff=scale.d_ff, block=block),
              OptimConfig(),
              TrainConfig(task="mlm", steps=0, batch_size=scale.batch_size, seq_len=2 * SEQ_LEN, seeds=scale.seeds,
                          eval_batches=1, progress=False),
              ProbeConfig(attention=False, jacobian=False, alignment=False), pad_to=pad)
    return {k: np.asarray(v[0], np.float64) for k, v in h.layers.items()}


def xiong_w2_profile(scale: Scale) -> dict[str, Any]:
    """Last/first-layer ratio of ‖∂loss/∂W2‖ (the per-layer geometric mean over seeds), Post-LN and Pre-LN."""
    out: dict[str, Any] = {"depth": scale.profile_depth}
    for block in ("post_ln", "pre_ln"):
        w2_L = aggregate.profile(_init_layers(block, scale.profile_depth, scale)["grad_norm/mlp_out"], True)[0]
        out[block] = float(w2_L[-1] / w2_L[0])
    return out


def xiong_preln_top_grad(scale: Scale) -> dict[str, Any]:
    """‖∂loss/∂W2‖ of Pre-LN's last layer at each depth."""
    return {"depths": list(scale.depths),
            "last_w2": [_geometric(_init_layers("pre_ln", d, scale)["grad_norm/mlp_out"][:, -1]) for d in scale.depths]}


def preln_stream_growth(scale: Scale) -> dict[str, Any]:
    """E‖x_L‖²/d of Pre-LN's stack output and E‖x_0‖²/d of its input (the embedding) at each depth."""
    layers = [_init_layers("pre_ln", d, scale) for d in scale.depths]
    return {"depths": list(scale.depths),
            "out_sq": [_mean(lay["out_act_rms"] ** 2) for lay in layers],
            "in_sq": [_mean(lay["act_rms"][:, 0] ** 2) for lay in layers]}


# --- output change after a parameter change (Liu et al. 2020) --------------------------------------------

def perturb(params: Any, key: jax.Array, size: float) -> Any:
    """Every block kernel W_l moved by size·rms(W_l)·Z, Z standard normal: the same relative change of every
    sublayer at every depth, as Liu et al.'s analysis assumes."""
    keys = jax.random.split(key, len(jax.tree.leaves(params)))

    def move(names, w, i):
        rms = jnp.sqrt(jnp.mean(jnp.square(w), axis=tuple(range(1, w.ndim)), keepdims=True))
        return w + size * rms * jax.random.normal(keys[i], w.shape, w.dtype)

    return _map_kernels(params, move)


def _output_change_program(block: str, scale: Scale):
    """(seed keys, tokens, active depth) -> ‖Δlogits‖²/‖logits‖² per seed, one program for every depth."""
    cfg = padded_config(_model_config(scale, 1, block=block), max(scale.change_depths))

    def one_seed(key, tokens, active):
        init_key, noise_key = jax.random.split(key)
        graphdef, params, rest = model_lib.init(cfg, init_key, active)
        moved = perturb(params, noise_key, PERTURBATION)
        return probes.amplification(graphdef, params, moved, rest, tokens, active) ** 2

    return _jit(jax.vmap(one_seed, in_axes=(0, None, None)))


def liu_output_change(scale: Scale) -> dict[str, Any]:
    """Mean over seeds of the relative squared output change at each depth, per block."""
    out: dict[str, Any] = {"depths": list(scale.change_depths)}
    keys, tokens = _seed_keys(scale.seeds), _tokens()
    for block in ("post_ln", "pre_ln", "admin"):
        program = _output_change_program(block, scale)
        out[block] = [_mean(np.asarray(program(keys, tokens, jnp.int32(d)))) for d in scale.change_depths]
    return out


# --- training at depth (Wang et al. 2022) ----------------------------------------------------------------

def deepnet_depth(scale: Scale) -> dict[str, Any]:
    """Post-LN at a shallow and a deep depth and DeepNorm at the deep one, trained with the quick preset's
    settings; per cell its mean final loss and how many seeds trained (`jaxnorm.outcome.trained`)."""
    spec = preset("quick")
    steps = scale.train_steps
    optim = spec.optim.replace(lr=spec.lrs[0], warmup_steps=min(spec.optim.warmup_steps, steps // 4))
    train_cfg = spec.train.replace(steps=steps, seeds=scale.train_seeds, log_every=min(50, steps), eval_every=steps,
                                   progress=False)
    shallow, deep = scale.train_depths
    rows = []
    for block, depth in (("post_ln", shallow), ("post_ln", deep), ("deepnorm", deep)):
        h = train(spec.model.replace(depth=depth, block=block), optim, train_cfg, NO_PROBES, pad_to=deep)
        for s in range(h.num_seeds):
            stats = summarize_seed(h, s)
            rows.append({"cell_id": f"{block}_L{depth}", "task": train_cfg.task,
                         "vocab_size": h.config["model"]["vocab_size"], "num_symbols": train_cfg.num_symbols,
                         "context_free_loss": h.config["data"]["context_free_loss"],
                         "final_loss": stats["final_loss"], "diverged": stats["diverged"]})
    df = pd.DataFrame(rows)
    df["trained"] = outcome.trained(df)
    out: dict[str, Any] = {"shallow": shallow, "deep": deep, "seeds": scale.train_seeds}
    for cell, g in df.groupby("cell_id", sort=False):
        out[f"{cell}_loss"] = float(g["final_loss"].mean())
        out[f"{cell}_trained"] = int(g["trained"].sum())
    return out


def _block_kernels(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The stacked block kernels [L, in, out] of a model initialised from key 0, by sub-module name."""
    params = _jit(lambda key: model_lib.init(cfg, key)[1])(jax.random.key(0))
    return {path_names(path)[-2]: np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if "blocks" in path_names(path) and path_names(path)[-1] == "kernel"}


def deepnorm_constants(scale: Scale) -> dict[str, Any]:
    """DeepNorm's α and β as the code computes them, and as a built model applies them: its blocks' residual
    multiplier, and the ratio of its kernels to a Post-LN model's drawn from the same key (β on the value,
    output and FFN kernels, 1 on the query and key kernels)."""
    p = placement("deepnorm")
    depths = (1, 6, 24, 100, 1000)
    cfg = _model_config(scale, scale.profile_depth)
    alphas = [float(depth_constants(p, cfg, float(n))["residual_scale"]) for n in depths]
    betas = [float(p.value_gain(float(n))) for n in depths]
    deep_cfg = cfg.replace(block="deepnorm")
    model_alpha = nnx.eval_shape(lambda: model_lib.Model(deep_cfg, rngs=nnx.Rngs(0))).encoder.blocks.residual_scale
    deep, post = _block_kernels(deep_cfg), _block_kernels(cfg.replace(block="post_ln"))
    # least squares: deep ≈ r·post
    ratios = {name: float(np.sum(deep[name] * post[name]) / np.sum(post[name] ** 2)) for name in post}
    return {"depths": list(depths), "alpha": alphas, "beta": betas, "model_depth": cfg.depth,
            "model_alpha": float(model_alpha), "kernel_ratios": ratios}


# --- attention at initialisation -------------------------------------------------------------------------

def unscaled_attention(scale: Scale) -> dict[str, Any]:
    """Attention entropy at initialisation for dot and dot_unscaled as the head size grows at a fixed width
    (experiments.attention_scaling.measure)."""
    from experiments.attention_scaling import measure

    out: dict[str, Any] = {"head_dims": list(scale.head_dims)}
    for form in ("dot", "dot_unscaled"):
        out[form] = [measure(form, dk, scale.attn_d_model // dk, depth=scale.attn_depth)[0]["attn_entropy"]
                     for dk in scale.head_dims]
    return out


def _scaled_qk(params: Any, factor: jax.Array) -> Any:
    return _map_kernels(params, lambda names, w, i: w * factor if names[-2] in ("query", "key") else w)


def entropy_collapse(scale: Scale) -> dict[str, Any]:
    """Mean attention entropy at initialisation with W_Q and W_K multiplied by each factor, for dot and
    σReparam (eval mode: its stored singular vectors, so σ(cW) = c·σ(W) is read, not re-estimated)."""
    out: dict[str, Any] = {"factors": list(scale.qk_factors)}
    keys, tokens = _seed_keys(scale.seeds), _tokens()
    for form in ("dot", "sigma_reparam"):
        cfg = _model_config(scale, scale.attn_depth, attention=form)

        def one_seed(key, tokens, factor, cfg=cfg):
            graphdef, params, rest = model_lib.init(cfg, key)
            _, diags, _ = model_lib.apply(graphdef, _scaled_qk(params, factor), rest, tokens, train=False)
            return jnp.mean(diags["attn_entropy"])

        program = _jit(jax.vmap(one_seed, in_axes=(0, None, None)))
        out[form] = [_mean(np.asarray(program(keys, tokens, jnp.float32(f)))) for f in scale.qk_factors]
    return out


# --- the residual stream's geometry ----------------------------------------------------------------------

def rank_collapse(scale: Scale) -> dict[str, Any]:
    """Mean pairwise cosine of the tokens (`token_alignment`) of x_0 ... x_L at initialisation, mean over
    seeds, without skips (`no_residual`) and with Pre-LN's."""
    out: dict[str, Any] = {"depth": scale.collapse_depth}
    keys, tokens = _seed_keys(scale.seeds), _tokens()
    for block in ("no_residual", "pre_ln"):
        cfg = _model_config(scale, scale.collapse_depth, block=block)

        def one_seed(key, tokens, cfg=cfg):
            xs = stream(model_lib.init(cfg, key), tokens)  # [L + 1, B, T, D]
            return jax.vmap(lambda x: residual_diagnostics(x)["token_alignment"])(xs)

        alignment_SxL = np.asarray(_jit(jax.vmap(one_seed, in_axes=(0, None)))(keys, tokens))
        out[block] = [float(a) for a in alignment_SxL.mean(axis=0)]
    return out


def rezero_isometry(scale: Scale) -> dict[str, Any]:
    """Every singular value of ReZero's dense end-to-end Jacobian ∂x_L/∂x_0 at initialisation (a tiny model)."""
    cfg = ModelConfig(depth=scale.isometry_depth, d_model=8, num_heads=2, d_ff=16, vocab_size=VOCAB, max_len=4,
                      block="rezero")

    def singular_values(key, tokens):
        graphdef, params, rest = model_lib.init(cfg, key)
        return probes.jacobian_stats(graphdef, params, rest, tokens, key,
                                     ProbeConfig(jacobian=False, spectrum=True))["jac_singular_values"]

    tokens = jax.random.randint(jax.random.key(TOKEN_KEY), (1, 4), 0, VOCAB)
    sv = np.asarray(_jit(singular_values)(jax.random.key(0), tokens), np.float64)
    return {"depth": cfg.depth, "count": int(sv.size), "max_deviation": float(np.max(np.abs(sv - 1.0)))}


# --- training at a high learning rate (Wortsman et al. 2023) ---------------------------------------------

@functools.lru_cache(maxsize=None)
def _lm_run(attention: str, z_loss: float, scale: Scale) -> dict[str, float]:
    """A Pre-LN character language model trained at a high learning rate: the largest attention logit (over
    layers and heads) at initialisation and at the end, and the mean log Z at the start and the end."""
    steps = scale.lm_steps
    h = train(ModelConfig(depth=scale.lm_depth, d_model=scale.d_model, num_heads=scale.num_heads, d_ff=scale.d_ff,
                          attention=attention),
              OptimConfig(lr=LM_LR, warmup_steps=steps // 6),
              TrainConfig(task="lm", steps=steps, batch_size=16, seq_len=2 * SEQ_LEN, seeds=scale.lm_seeds,
                          z_loss=z_loss, log_every=min(50, steps), eval_every=steps, eval_batches=1, progress=False),
              ProbeConfig(grads=False, activations=False, jacobian=False, alignment=False))
    logit_max = h.layers["attn_logit_max"]  # [logged steps, S, L, H]
    log_z = h.metrics["log_z"]              # [steps, S]
    return {"logit_init": _mean(logit_max[0].max(axis=(1, 2))), "logit_final": _mean(logit_max[-1].max(axis=(1, 2))),
            "log_z_init": _mean(log_z[0]), "log_z_final": _mean(log_z[-FINAL_WINDOW:].mean(axis=0))}


def attn_logit_growth(scale: Scale) -> dict[str, Any]:
    """The largest attention logit at initialisation and after training, without (dot) and with QK-norm."""
    dot, qk = _lm_run("dot", 0.0, scale), _lm_run("qk_norm", 0.0, scale)
    return {"steps": scale.lm_steps, "dot": [dot["logit_init"], dot["logit_final"]],
            "qk_norm": [qk["logit_init"], qk["logit_final"]]}


def z_loss(scale: Scale) -> dict[str, Any]:
    """Mean log Z at the end of training without and with z-loss (and at the start)."""
    off, on = _lm_run("dot", 0.0, scale), _lm_run("dot", Z_LOSS, scale)
    return {"steps": scale.lm_steps, "coefficient": Z_LOSS, "log_z_init": off["log_z_init"],
            "without": off["log_z_final"], "with": on["log_z_final"]}
