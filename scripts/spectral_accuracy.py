"""Spectral-norm estimators against the dense SVD: error and cost of Lanczos and power iteration.

    python scripts/spectral_accuracy.py                  # depth 8 at the `quick` preset's width
    python scripts/spectral_accuracy.py --depth 16 --train-steps 200
    python scripts/spectral_accuracy.py --tiny           # smoke run (depth 2, tiny width; not a measurement)

On the benchmark model (its probe batch, as `jaxnorm.trainer` probes it), at initialisation and after
`--train-steps` AdamW steps, every layer's ‖∂x_{l+1}/∂x_l‖₂ and the end-to-end ‖∂x_L/∂x_0‖₂ are computed
exactly, as √ of the largest eigenvalue of JᵀJ in float64 from the dense `jax.jacfwd` Jacobians, and each
estimator (`ProbeConfig.spectral_method` × `power_iters`) is compared with them from the same random starts.
Both methods spend `power_iters` products JᵀJv per norm, so the ms/call column compares them at equal
work; it is the whole Jacobian probe call (`jacobian_stats_seeds`, Hutchinson included), median of repeats.
Errors are relative, σ₁ − estimate over σ₁: both estimators approach σ₁ from below.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import numpy as np

from jaxnorm import probes
from jaxnorm import trainer as train_lib
from jaxnorm.benchmarking.setups import NO_PROBES, bench_configs, describe_width, make_setup, start
from jaxnorm.benchmarking.timing import median_time
from jaxnorm.config import ProbeConfig

ESTIMATORS = (("power", 10), ("power", 20), ("lanczos", 10), ("lanczos", 20))


def _top_singular_value(J_KxK: np.ndarray) -> float:
    """σ₁ = √λ_max(JᵀJ) in float64 (an eigenvalue problem is several times cheaper than the full SVD)."""
    J = np.asarray(J_KxK, np.float64)
    return float(np.sqrt(max(np.linalg.eigvalsh(J.T @ J)[-1], 0.0)))


def exact_norms(graphdef, params, rest, tokens) -> tuple[np.ndarray, float]:
    """(σ₁ per layer [L], σ₁ end to end) of one seed's eval-mode stream, from dense Jacobians."""
    _, xs_LxBxTxD, block_fn, block_state = probes.residual_stream(graphdef, params, rest, tokens)

    @jax.jit
    def layer_jacobian(state_l, x_BxTxD):
        return jax.jacfwd(lambda v: block_fn(state_l, v.reshape(x_BxTxD.shape)).reshape(-1))(x_BxTxD.reshape(-1))

    L = xs_LxBxTxD.shape[0]
    per_layer = [_top_singular_value(layer_jacobian(jax.tree.map(lambda a: a[l], block_state), xs_LxBxTxD[l]))
                 for l in range(L)]
    e2e = _top_singular_value(jax.jit(probes.end_to_end_jacobian_dense, static_argnums=0)(
        graphdef, params, rest, tokens))
    return np.array(per_layer), e2e


def accuracy_rows(depth: int, *, train_steps: int, tiny: bool = False, repeats: int = 5,
                  block: str = "pre_ln", estimators: tuple = ESTIMATORS) -> list[dict]:
    """One row per (parameters, method, steps): relative errors against the dense norms and ms per call."""
    model_cfg, optim_cfg, train_cfg = bench_configs(depth, block=block, tiny=tiny)
    setup = make_setup(model_cfg, optim_cfg, train_cfg, NO_PROBES)
    n = train_cfg.log_every
    chunk = setup.chunk(n, False)
    tokens = train_lib.probe_tokens(setup.data, ProbeConfig())
    points, state, done = [], setup.state, 0  # (steps trained, state, exact per-layer norms, exact end to end)
    for target in sorted({0, train_steps}):
        while done < target:
            state, _, _ = chunk(state, setup.data_keys, setup.data)
            done += n
        seed0 = jax.tree.map(lambda a: a[0], (state.params, state.rest))
        points.append((done, state, *exact_norms(setup.fns.graphdef, *seed0, tokens)))
    rows = []
    for method, steps in estimators:  # estimator-major: each program compiles once (jaxnorm keeps two)
        cfg = ProbeConfig(spectral_method=method, power_iters=steps)
        for done, state, exact_L, exact_e2e in points:
            call = functools.partial(probes.jacobian_stats_seeds, setup.fns.graphdef, state.params, state.rest,
                                     tokens, jax.random.key(0), cfg)
            out = jax.tree.map(lambda a: np.asarray(a[0], np.float64), call())
            err_L = 1.0 - out["jac_spectral"] / exact_L
            rows.append({"depth": depth, "steps_trained": done, "method": method, "steps": steps,
                         "max_err": float(np.max(err_L)), "median_err": float(np.median(err_L)),
                         "e2e_err": float(1.0 - out["jac_end_to_end"] / exact_e2e),
                         "ms": 1e3 * median_time(call, repeats=repeats)})
    rows.sort(key=lambda r: r["steps_trained"])  # stable: estimator order within each point
    return rows


def accuracy_table(rows: list[dict]) -> str:
    lines = ["| depth | trained steps | method | products JᵀJv | max error (layers) | median error (layers) "
             "| end-to-end error | ms/call |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['steps_trained']} | {r['method']} | {r['steps']} | {r['max_err']:.2e} | "
                     f"{r['median_err']:.2e} | {r['e2e_err']:.2e} | {r['ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=100, help="AdamW steps before the second comparison")
    parser.add_argument("--block", default="pre_ln")
    parser.add_argument("--tiny", action="store_true", help="smoke run: depth 2, tiny width")
    args = parser.parse_args(argv)
    start(args.tiny)
    depth, steps = (2, 0) if args.tiny else (args.depth, args.train_steps)
    print(f"# spectral-norm estimators vs dense Jacobians ({args.block}, depth {depth}; {describe_width(args.tiny)}; "
          f"probe batch {ProbeConfig().probe_batch})")
    estimators = ESTIMATORS[::2] if args.tiny else ESTIMATORS  # a smoke run: each method once
    print(accuracy_table(accuracy_rows(depth, train_steps=steps, tiny=args.tiny, repeats=2 if args.tiny else 5,
                                       block=args.block, estimators=estimators)))
    print("error = (σ₁ − estimate) / σ₁, σ₁ exact from the dense Jacobian; ms/call: the whole Jacobian probe call.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
