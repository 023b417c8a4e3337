"""Property tests: any valid model config initialises and runs finite; any malformed config value is a
ValueError naming its field (never an exception from deep inside JAX).

The model properties run eagerly (`jax.disable_jit()`): each example is a different program, and
compiling each would cost far more than running it at these sizes.
"""

import math

import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnorm import model as model_lib
from jaxnorm.config import (
    ACTIVATIONS, ADMIN_MODES, ATTENTIONS, BLOCKS, DTYPES, INITS, NORM_FREE_BLOCKS, NORMS, OPTIMIZERS, POSITIONS,
    SCHEDULES, CLIPS, SEQUENCE_MIXING_NORMS, SPECTRAL_METHODS, TASKS, ModelConfig, OptimConfig, ProbeConfig,
    TrainConfig,
)

VOCAB, T = 7, 6


@st.composite
def valid_model_configs(draw):
    d_model = draw(st.sampled_from([8, 16]))
    block, norm = draw(st.sampled_from(BLOCKS)), draw(st.sampled_from(NORMS))
    causal = draw(st.booleans())
    if causal and norm in SEQUENCE_MIXING_NORMS and block not in NORM_FREE_BLOCKS:
        causal = False  # refused by design (the norm would leak the future)
    return ModelConfig(
        depth=draw(st.integers(1, 3)), d_model=d_model,
        num_heads=draw(st.sampled_from([h for h in (1, 2, 4, 8) if d_model % h == 0])),
        d_ff=draw(st.sampled_from([8, 16])), vocab_size=VOCAB, max_len=T, block=block, norm=norm,
        attention=draw(st.sampled_from(ATTENTIONS)), activation=draw(st.sampled_from(ACTIVATIONS)),
        init=draw(st.sampled_from(INITS)), positions=draw(st.sampled_from(POSITIONS)), causal=causal,
        num_groups=draw(st.sampled_from([1, 2, 4])), admin_mode=draw(st.sampled_from(ADMIN_MODES)))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=valid_model_configs(), seed=st.integers(0, 2**16))
def test_valid_configs_init_forward_backward_finite(cfg, seed):
    key_init, key_tok = jax.random.split(jax.random.key(seed))
    toks = jax.random.randint(key_tok, (2, T), 0, VOCAB)
    with jax.disable_jit():
        gd, params, rest = model_lib.init(cfg, key_init)

        def loss(p):
            logits, _, _ = model_lib.apply(gd, p, rest, toks, train=True)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert logits.shape == (2, T, VOCAB)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(logits))), cfg
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), cfg


# --- malformed values ---------------------------------------------------------------------------------

def _not_in(allowed):
    junk = st.one_of(st.text(max_size=12), st.integers(), st.none(), st.floats(allow_nan=True),
                     st.lists(st.sampled_from(allowed), max_size=2))
    return junk.filter(lambda v: not (isinstance(v, str) and v in allowed))


def _bad_int(minimum):
    return st.one_of(st.integers(max_value=minimum - 1), st.booleans(), st.floats(allow_nan=True),
                     st.text(max_size=5), st.none(), st.just("3"))


def _bad_float(minimum, strict=False, maximum=None):
    below = st.floats(max_value=minimum, exclude_max=not strict, allow_nan=False)
    options = [below, st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.text(max_size=5), st.none(),
               st.booleans()]
    if maximum is not None:
        options.append(st.floats(min_value=maximum, exclude_min=True, allow_nan=False))
    return st.one_of(*options)


def _bad_bool():
    return st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats(allow_nan=True))


FIELDS = {
    ModelConfig: {"depth": _bad_int(1), "d_model": _bad_int(1), "num_heads": _bad_int(1), "d_ff": _bad_int(1),
                  "vocab_size": _bad_int(2), "max_len": _bad_int(1), "num_groups": _bad_int(1),
                  "sigma_reparam_iters": _bad_int(1), "block": _not_in(BLOCKS), "norm": _not_in(NORMS),
                  "attention": _not_in(ATTENTIONS), "activation": _not_in(ACTIVATIONS), "init": _not_in(INITS),
                  "positions": _not_in(POSITIONS), "admin_mode": _not_in(ADMIN_MODES), "dtype": _not_in(DTYPES),
                  "causal": _bad_bool(), "scan": _bad_bool(), "remat": _bad_bool(),
                  "norm_eps": _bad_float(0.0, strict=True), "depth_mup_alpha": _bad_float(0.0),
                  "mix_ln_alpha": _bad_float(0.0, maximum=1.0)},
    OptimConfig: {"optimizer": _not_in(OPTIMIZERS), "schedule": _not_in(SCHEDULES), "clip": _not_in(CLIPS),
                  "lr": _bad_float(0.0, strict=True), "warmup_steps": _bad_int(0),
                  "clip_value": _bad_float(0.0, strict=True), "weight_decay": _bad_float(0.0),
                  "b1": _bad_float(0.0, maximum=1.0), "b2": _bad_float(0.0, maximum=1.0), "eps": _bad_float(0.0),
                  "skip_nonfinite": _bad_bool()},
    TrainConfig: {"task": _not_in(TASKS), "steps": _bad_int(0), "batch_size": _bad_int(1), "seq_len": _bad_int(2),
                  "num_symbols": _bad_int(2), "text_bytes": _bad_int(1), "seeds": _bad_int(1), "seed": _bad_int(0),
                  "log_every": _bad_int(1), "eval_every": _bad_int(1), "eval_batches": _bad_int(1),
                  "divergence_factor": _bad_float(1.0, strict=True), "z_loss": _bad_float(0.0),
                  "progress": _bad_bool()},
    ProbeConfig: {**{f: _bad_bool() for f in ("grads", "activations", "attention", "jacobian", "alignment",
                                              "amplification", "spectrum")},
                  "probe_every": _bad_int(1), "probe_batch": _bad_int(1), "power_iters": _bad_int(1),
                  "hutchinson_samples": _bad_int(1), "spectral_method": _not_in(SPECTRAL_METHODS)},
}
CASES = [(cls, field, strategy) for cls, fields in FIELDS.items() for field, strategy in fields.items()]


@st.composite
def malformed(draw):
    cls, field, strategy = draw(st.sampled_from(CASES))
    return cls, field, draw(strategy)


@settings(max_examples=200, deadline=None)
@given(case=malformed())
def test_malformed_config_is_a_value_error_naming_the_field(case):
    cls, field, value = case
    try:
        cls(**{field: value})
    except ValueError as e:  # ConfigError
        assert str(e).startswith(f"{cls.__name__}.{field}: invalid value"), str(e)
        assert "\n" not in str(e)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{cls.__name__}({field}={value!r}) raised {type(e).__name__}: {e}") from e
    else:
        raise AssertionError(f"{cls.__name__}({field}={value!r}) was accepted")


def test_every_field_is_covered():
    import dataclasses
    for cls, fields in FIELDS.items():
        expected = {f.name for f in dataclasses.fields(cls)} - {"text_file"}
        assert set(fields) == expected, cls.__name__
