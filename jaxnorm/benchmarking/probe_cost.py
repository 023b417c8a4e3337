"""Cost of each probe family, as a ratio to the bare train step, measured side by side.

Per-layer families run inside the train chunk's first step, as `jaxnorm.trainer` runs them: a chunk whose first
step is probed is timed against the same chunk with no probed step. The Jacobian probes run outside the step,
every probe_every steps: one call is timed in turn with the chunks and amortised over probe_every bare steps.
"""

from __future__ import annotations

from jaxnorm.benchmarking.setups import LAYER_FAMILIES, NO_PROBES, bench_configs, cached_setup
from jaxnorm.benchmarking.timing import interleaved_medians
from jaxnorm.config import ProbeConfig


def probe_overheads(depths: list[int], *, tiny: bool = False, repeats: int = 10, block: str = "pre_ln",
                    families: tuple[str, ...] = LAYER_FAMILIES + ("all",), probe_every: int | None = None
                    ) -> list[dict]:
    """One row per (depth, family): its time; `step_ratio`, the probed step in bare steps (1 + (t_probed_chunk
    − t_bare_chunk) / t_bare_step; for the Jacobian t_call / t_bare_step); `chunk_ratio`, the cost as training
    pays it (t_probed_chunk / t_bare_chunk; for the Jacobian 1 + t_call / (probe_every × t_bare_step))."""
    default = ProbeConfig()
    probe_every = probe_every or default.probe_every
    rows = []
    for depth in depths:
        model_cfg, optim_cfg, train_cfg = bench_configs(depth, block=block, tiny=tiny)
        n = train_cfg.log_every
        bare = cached_setup(model_cfg, optim_cfg, train_cfg, NO_PROBES)
        runners = {"bare": bare.runner(n, False)}
        for fam in families:
            cfg = NO_PROBES.replace(**({f: True for f in LAYER_FAMILIES} if fam == "all" else {fam: True}))
            runners[fam] = cached_setup(model_cfg, optim_cfg, train_cfg, cfg).runner(n, True)
        # The bare setup's parameters (the probes run outside the step), timed in turn with the chunks so a
        # change in machine load cannot skew its ratio to the bare step.
        runners["jacobian"] = bare.jacobian_runner(default)
        t = interleaved_medians(runners, repeats=repeats)
        step = t["bare"] / n
        rows.append({"depth": depth, "family": "bare", "time_ms": 1e3 * t["bare"], "unit": f"chunk of {n}",
                     "step_ratio": 1.0, "chunk_ratio": 1.0})
        for fam in families:
            rows.append({"depth": depth, "family": fam, "time_ms": 1e3 * t[fam], "unit": f"chunk of {n}",
                         "step_ratio": 1.0 + (t[fam] - t["bare"]) / step, "chunk_ratio": t[fam] / t["bare"]})
        t_jac = t["jacobian"]
        rows.append({"depth": depth, "family": f"jacobian (every {probe_every})", "time_ms": 1e3 * t_jac,
                     "unit": "call", "step_ratio": t_jac / step,
                     "chunk_ratio": 1.0 + t_jac / (probe_every * step)})
    return rows


def probe_table(rows: list[dict]) -> str:
    lines = ["| depth | probes | time ms | per | probed step / bare step | amortised ratio to bare |",
             "|---:|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['family']} | {r['time_ms']:.1f} | {r['unit']} | "
                     f"{r['step_ratio']:.2f} | {r['chunk_ratio']:.3f} |")
    return "\n".join(lines)


TABLE_NOTE = ("amortised: per-layer families = probed chunk / bare chunk (one probed step per log_every); "
              "jacobian = 1 + t_call / (probe_every × t_bare_step); for jacobian the step column is "
              "t_call / t_bare_step.")
