"""Train a grid of Transformers over depth and record where gradients vanish or explode.

    python -m experiments.depth_sweep                      # the `quick` preset (9 cells, CPU-sized)
    python -m experiments.depth_sweep --preset paper --shard 0/4 --out runs/paper
    python -m experiments.depth_sweep --preset paper --distributed   # on every host of a TPU pod slice
    python -m experiments.depth_sweep --depths 2,8,32 --blocks post_ln,pre_ln --lrs 1e-3,3e-3 --out runs/mine

Flags override the preset. Rerunning the same command resumes (finished cells are skipped, damaged ones
redone, one line each); it refuses cells that ran under another setting (devices, library versions, git
commit) unless --allow-mixed. Ctrl-C (status 130) and SIGTERM (143) stop cleanly with the command that
resumes. Invalid input prints one line `error: <field>: <problem>; allowed: ...` and exits with status 2
before anything is written; a failure drawing the figures or report exits 1 with one line. Results: <out>/results.csv, or `jaxnorm.results.load(<out>)` in a notebook.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from experiments import sweep_options
from jaxnorm import axes
from jaxnorm.config import ACTIVATIONS, ADMIN_MODES, INITS, LIMITS, POSITIONS, SCHEDULES, TASKS, ConfigError

PRESET_NAMES = ("quick", "compare", "paper", "init")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        _die(message)


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _flag_error(flag: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{flag}: invalid value {value!r}; allowed: {allowed}")


def _split(flag: str, text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise _flag_error(flag, text, "a comma-separated list without empty items")
    return items


def _at_most(maximum: int | None) -> str:
    return "" if maximum is None else f" and <= {maximum}"


def _int(flag: str, text: str | None, minimum: int, maximum: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= (maximum or value):
        raise _flag_error(flag, text, f"an integer >= {minimum}" + _at_most(maximum))
    return value


def _axis_values(axis: axes.Axis, text: str | None) -> tuple | None:
    """The values of a grid-axis flag's comma-separated text, each item parsed by its axis's `parse`
    (jaxnorm.axes); the spec checks the values. None when the flag is not given."""
    items = _split(axis.flag, text)
    try:
        return None if items is None else tuple(axis.parse(t) for t in items)
    except ValueError:
        raise _flag_error(axis.flag, text, f"comma-separated {axis.allowed()}") from None


def _float(flag: str, text: str | None, minimum: float) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):
        raise _flag_error(flag, text, f"a finite number >= {minimum}")
    return value


# Base-configuration choices (not grid axes): flag -> (config part, field, allowed values).
CHOICE_FLAGS = {
    "--init": ("model", "init", INITS), "--activation": ("model", "activation", ACTIVATIONS),
    "--positions": ("model", "positions", POSITIONS), "--admin-mode": ("model", "admin_mode", ADMIN_MODES),
    "--schedule": ("optim", "schedule", SCHEDULES),
}
SWITCH_FLAGS = {  # flag -> (config part, field): store_true switches
    "--spectrum": ("probe", "spectrum"), "--amplification": ("probe", "amplification"),
    "--remat": ("model", "remat"), "--skip-nonfinite": ("optim", "skip_nonfinite"),
}


def parse_shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise _flag_error("--shard", text, "i/n with integers 0 <= i < n, e.g. 0/4")
    return shard


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix such as --seed (read as --seeds, a count) or --depth must be refused,
    # not silently taken for a different flag.
    p = _Parser(prog="python -m experiments.depth_sweep", description=__doc__.split("\n\n")[0],
                allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", default="quick", help=f"base grid, one of: {', '.join(PRESET_NAMES)} (default quick)")
    for axis in axes.axes():  # the grid axes, from jaxnorm.axes
        a(axis.flag, dest=axis.field, metavar=axis.flag[2:].upper().replace("-", "_"), help=axis.flag_help())
    a("--seeds", help="models per cell, trained together (vmapped); integer >= 1")
    a("--steps", help="optimizer steps per cell; 0 = gradients at initialisation only")
    a("--task", help=f"one of: {', '.join(TASKS)} (lm is causal; mlm and the others bidirectional)")
    a("--batch-size", help="sequences per step, integer >= 1")
    a("--seq-len", help="sequence length T (even for reverse/sort/copy)")
    a("--d-model", help="residual width D (divisible by --heads)")
    a("--heads", help="attention heads H")
    a("--d-ff", help="MLP hidden width F")
    a("--log-every", help="metrics to the host (and metrics.jsonl) every N steps")
    a("--eval-every", help="held-out loss every N steps (and at the end)")
    a("--probe-every", help="Jacobian probes every N steps (and at step 0 and the end)")
    a("--text-file", help="corpus for --task lm or mlm (default: the Python standard library's source)")
    for flag, (_, field, allowed) in CHOICE_FLAGS.items():
        a(flag, help=f"{field}, one of: {', '.join(allowed)}")
    a("--depth-mup-alpha", help="depth_mup branch multiplier exponent α (branches scaled by L^-α), >= 0")
    a("--z-loss", help="z-loss coefficient c (c·log²Z added to the loss; Wortsman et al. 2023), >= 0")
    a("--warmup-steps", help="learning-rate warmup steps, integer >= 0")
    for flag, (part, field) in SWITCH_FLAGS.items():
        a(flag, action="store_true", help=f"set {part} {field} = true")
    a("--out", help="run directory (default runs/<preset>); rerun the same command to resume")
    a("--allow-mixed", action="store_true",
      help="resume even if finished cells ran under another setting (device count or kind, library versions, "
           "git commit); the report then lists which cells ran how")
    a("--shard", default="0/1", help="i/n: run cells i, i+n, i+2n, ... so n machines share one --out")
    a("--no-progress", action="store_true", help="no progress bars")
    a("--pack", default="auto",
      help="runs (seeds of cells differing only in learning rate, weight decay, clip threshold or seed) trained "
           "side by side in one program: an integer >= 1, or auto (default: one cell at a time on a CPU, where "
           "packing measured no faster; as many runs as fit in an accelerator's memory)")
    a("--no-share", action="store_true",
      help="compile one set of programs per cell instead of sharing them across depths and packing cells (the "
           "same results, slower; for measuring what sharing saves)")
    a("--no-compile-ahead", action="store_true",
      help="compile each model structure's programs when its first cell starts, instead of on a background "
           "thread while the cells before it train (the same results, slower)")
    a("--cpu-devices", default="auto",
      help="split the CPU into N JAX devices so that a cell's seeds run side by side (no effect on GPU/TPU); "
           "auto = the divisor of --seeds nearest the core count, up to twice it (default auto; 1 = one device)")
    a("--distributed", action="store_true",
      help="join a multi-host job first (jax.distributed.initialize(), which finds a TPU pod slice, SLURM, "
           "Open MPI or Kubernetes job by itself); each process runs its share of the cells on its own devices")
    sweep_options.add_flags(p)  # research settings, outputs, spec files, --help's presets
    return p


def join_distributed() -> None:
    """--distributed: join the job's other processes before JAX starts (jaxnorm.sweep splits the cells)."""
    import jax

    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--distributed: cannot join a multi-host job ({reason}); allowed: a TPU pod slice, "
                          "SLURM, Open MPI or Kubernetes job that jax.distributed.initialize() detects, "
                          "before JAX has started in this process") from None


def use_cpu_devices(text: str, seeds: int) -> None:
    """Apply --cpu-devices before JAX starts. When JAX has already started in this process (main called from
    Python), `auto` keeps its devices and an explicit count must match them."""
    import jax

    from jaxnorm import sharding

    try:
        n = sharding.auto_cpu_devices(seeds) if text == "auto" else int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= LIMITS["cpu_devices"]:
        raise _flag_error("--cpu-devices", text, f"auto or an integer >= 1 and <= {LIMITS['cpu_devices']}")
    try:
        sharding.set_cpu_devices(n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if text != "auto" and n != have:
            raise _flag_error("--cpu-devices", text, f"{have} (JAX has already started with {have} CPU "
                              "devices in this process)") from None


def build_spec(args: argparse.Namespace):
    """The preset's spec with every given flag applied; ConfigError on any invalid input."""
    from jaxnorm.sweep import preset

    if args.preset not in PRESET_NAMES:
        raise _flag_error("--preset", args.preset, ", ".join(PRESET_NAMES))
    spec = getattr(args, "base_spec", None) or preset(args.preset)  # --config of a sweep.json replaces the preset
    grid: dict[str, Any] = {}
    for axis in axes.axes():
        if (v := _axis_values(axis, getattr(args, axis.field))) is not None:
            grid[axis.field] = v
    if (v := _int("--seeds", args.seeds, 1, LIMITS["seeds"])) is not None:
        grid["seeds"] = v
    train, model, probe = {}, {}, {}
    for flag, attr, target, field, minimum in (
            ("--steps", "steps", train, "steps", 0), ("--batch-size", "batch_size", train, "batch_size", 1),
            ("--seq-len", "seq_len", train, "seq_len", 2), ("--log-every", "log_every", train, "log_every", 1),
            ("--eval-every", "eval_every", train, "eval_every", 1), ("--d-model", "d_model", model, "d_model", 1),
            ("--heads", "heads", model, "num_heads", 1), ("--d-ff", "d_ff", model, "d_ff", 1),
            ("--probe-every", "probe_every", probe, "probe_every", 1)):
        if (v := _int(flag, getattr(args, attr), minimum, LIMITS.get(field))) is not None:
            target[field] = v
    optim: dict[str, Any] = {}
    parts = {"model": model, "optim": optim, "train": train, "probe": probe}
    for flag, (part, field, allowed) in CHOICE_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            if value not in allowed:
                raise _flag_error(flag, value, ", ".join(allowed))
            parts[part][field] = value
    for flag, (part, field) in SWITCH_FLAGS.items():
        if getattr(args, flag[2:].replace("-", "_")):
            parts[part][field] = True
    if (v := _float("--depth-mup-alpha", args.depth_mup_alpha, 0.0)) is not None:
        model["depth_mup_alpha"] = v
    if (v := _float("--z-loss", args.z_loss, 0.0)) is not None:
        train["z_loss"] = v
    if (v := _int("--warmup-steps", args.warmup_steps, 0, LIMITS["steps"])) is not None:
        optim["warmup_steps"] = v
    if args.task is not None:
        if args.task not in TASKS:
            raise _flag_error("--task", args.task, ", ".join(TASKS))
        train["task"] = args.task
    if args.text_file is not None:
        train["text_file"] = args.text_file
    spec = spec.replace(**grid, train=spec.train.replace(**train), model=spec.model.replace(**model),
                        optim=spec.optim.replace(**optim), probe=spec.probe.replace(**probe))
    return sweep_options.apply_flags(args, spec)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `kill` send before killing a job), raised where the sweep is, so
    that it stops as on Ctrl-C: finished cells kept, the current one abandoned cleanly, a resume hint."""


_SIGTERM_RECEIVED: list[bool] = []


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    _SIGTERM_RECEIVED.append(True)  # if a library turns Terminated into its own error, main still knows
    raise Terminated


def _redeliver_lost_interrupts(previous_hook):
    """A sys.unraisablehook: an interrupt raised where Python cannot propagate it (the signal handler ran inside
    a garbage-collector callback, e.g. JAX's, which swallows exceptions) is raised again 50 ms later from a
    SIGALRM handler, so it lands in the sweep instead of being printed and ignored (if it is swallowed again,
    this hook sees it again)."""
    def hook(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):  # Terminated is one too
            previous_hook(info)
            return
        again = type(info.exc_value)

        def raise_again(signum, frame):
            raise again
        signal.signal(signal.SIGALRM, raise_again)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
    return hook


def _one_line_warnings() -> None:
    """Warnings (a skipped damaged or foreign cell) as one `warning: ...` line each, no source line."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def _default_out(args: argparse.Namespace) -> str:
    return args.out if args.out is not None else f"runs/{args.preset}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        expanded, base_spec = sweep_options.expand_config(argv, parser)  # --config FILE
    except ValueError as e:
        _die(str(e))
    args = parser.parse_args(expanded)
    args.base_spec = base_spec
    out = _default_out(args)
    _one_line_warnings()
    try:
        spec = build_spec(args)
        if args.print_config:
            print(sweep_options.print_config(spec))
            return 0
        outputs = sweep_options.outputs_from(args, out)
        shard = parse_shard(args.shard)
        pack = None if args.pack == "auto" else _int("--pack", args.pack, 1, None)
        use_cpu_devices(args.cpu_devices, spec.seeds)
        if args.distributed:
            join_distributed()
        from jaxnorm import sweep
        sweep.validate(spec, out, shard, allow_mixed=args.allow_mixed)
    except (ValueError, ImportError) as e:  # ConfigError, DataError, a missing extra: one line, nothing written
        _die(str(e))
    previous, previous_hook = signal.signal(signal.SIGTERM, _on_sigterm), sys.unraisablehook
    sys.unraisablehook = _redeliver_lost_interrupts(previous_hook)
    try:
        df = sweep.run(spec, out, shard=shard, progress=not args.no_progress, allow_mixed=args.allow_mixed,
                       outputs=outputs, share=not args.no_share, pack=pack,
                       compile_ahead=not args.no_compile_ahead)
    except KeyboardInterrupt as e:
        return _interrupted(out, argv, terminated=isinstance(e, Terminated))
    except Exception as e:
        return _after_failure(e, out, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook
    from jaxnorm import results

    print(results.summary_table(df))
    n_div = int(df["diverged"].sum()) if len(df) else 0
    print(f"{df.cell_id.nunique() if len(df) else 0} cells, {len(df)} runs, {n_div} diverged -> {out}/results.csv")
    print(where_to_look(Path(out)))
    if "time" in df.attrs:  # where this run's time went
        print(df.attrs["time"])
    return 0


def _after_failure(e: Exception, out: str, argv: list[str]) -> int:
    """The exit status (and one line) for an error out of the sweep: after a SIGTERM, whatever the error, it
    is the termination (XLA's compiler, for one, turns Terminated raised in its callback into a RuntimeError);
    a failed figure or report is status 1; a different spec that won the race to create sweep.json is 2."""
    from jaxnorm.sweep import ReportError

    if _SIGTERM_RECEIVED:
        return _interrupted(out, argv, terminated=True)
    if isinstance(e, ReportError):
        print(f"error: {e}", file=sys.stderr)
        return 1
    if isinstance(e, ValueError):
        _die(str(e))
    raise e


def _interrupted(out: str, argv: list[str], *, terminated: bool) -> int:
    """The message after Ctrl-C (status 130) or SIGTERM (143): what is saved and the command that resumes."""
    command = shlex.join([sys.executable, "-m", "experiments.depth_sweep", *argv])
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    print(f"\n{what}: {_finished_count(Path(out))} finished cells are saved in {out}; resume with:\n  {command}",
          file=sys.stderr)
    return 143 if terminated else 130


def _finished_count(out: Path) -> int | str:
    """How many of sweep.json's cells are finished and look intact. Reads JSON only: the interrupt may have
    landed in the middle of importing pandas or JAX, which would then fail to import again."""
    from jaxnorm import integrity

    try:
        ids = json.loads((out / "sweep.json").read_bytes())["cell_ids"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    done = 0
    for cell_id in ids:
        try:
            integrity.check_sizes(out / "cells" / cell_id)
            done += 1
        except (integrity.DamagedCell, OSError):
            pass
    return done


def where_to_look(out: Path) -> str:
    """The console's last lines: where the report and figures are, and which figure to open first."""
    lines = []
    if (out / "report.md").is_file():
        lines.append(f"report: {out / 'report.md'} (findings first)")
    figures = out / "figures"
    first = next((figures / n for n in ("loss_vs_depth.png", "grad_profile.png", "loss_curves.png")
                  if (figures / n).is_file()), None)
    if first is not None:
        lines.append(f"figures: {figures}/ — open {first.name} first")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
