"""The depth sweep's command-line options beyond the grid: research settings, outputs, spec files, --help's
presets. Kept apart from the grid-axis flags of `experiments/depth_sweep.py`, which calls `add_flags`,
`expand_config`, `apply_flags` and `outputs_from`.

Spec files (`--config FILE`):
- a resolved spec: a run's `sweep.json`, or what `--print-config` prints (a JSON object with a "spec" key),
  reruns exactly that spec, with the same cell ids; flags override it as they override a preset. Without
  --out it resumes in the folder of that sweep.json.
- a .toml or .json file whose keys are the flags' names (`depths = [2, 8]`, `batch-size = 16`, `spectrum =
  true`; `batch_size` also works): the same as typing those flags first, so flags on the command line
  override them.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from jaxnorm.config import DTYPES, SPECTRAL_METHODS, ConfigError, ModelConfig, OptimConfig, ProbeConfig, TrainConfig

PROBE_FAMILIES = ("grads", "activations", "attention", "jacobian", "alignment", "amplification", "spectrum")
# Research settings: flag -> (config part, field, kind, minimum, maximum); kind int, float or a tuple of names.
CONFIG_FLAGS = {
    "--first-seed": ("train", "seed", int, 0, 2**31 - 1),
    "--eval-batches": ("train", "eval_batches", int, 1, 10**6),
    "--weight-decay": ("optim", "weight_decay", float, 0.0, None),
    "--b1": ("optim", "b1", float, 0.0, 1.0),
    "--b2": ("optim", "b2", float, 0.0, 1.0),
    "--eps": ("optim", "eps", float, 0.0, None),
    "--dtype": ("model", "dtype", DTYPES, None, None),
    "--probe-batch": ("probe", "probe_batch", int, 1, 2**16),
    "--power-iters": ("probe", "power_iters", int, 1, 10**4),
    "--hutchinson-samples": ("probe", "hutchinson_samples", int, 1, 10**4),
    "--spectral-method": ("probe", "spectral_method", SPECTRAL_METHODS, None, None),
}
CONFIG_HELP = {
    "--first-seed": "the first seed: a cell trains seeds N, N+1, ... (--seeds of them)",
    "--eval-batches": "batches per held-out evaluation",
    "--weight-decay": "decoupled weight decay (adamw, lion, adafactor; never on norms, biases, scalars)",
    "--b1": "first-moment decay (adam, adamw, lion) / momentum (sgd)",
    "--b2": "second-moment decay (adam, adamw, lion) / decay of rmsprop's (bias-corrected) average",
    "--eps": "the optimizer's denominator epsilon",
    "--dtype": "matmul compute dtype (parameters stay float32; bfloat16 is for GPU/TPU)",
    "--probe-batch": "sequences in the fixed probe batch of the Jacobian probes",
    "--power-iters": "products JᵀJv per spectral norm (Lanczos or power-iteration steps)",
    "--hutchinson-samples": "Rademacher samples of the Frobenius-norm estimate",
    "--spectral-method": "how spectral norms are read from the products JᵀJv",
}
CONFIG_DEFAULTS = {"model": ModelConfig(), "optim": OptimConfig(), "train": TrainConfig(), "probe": ProbeConfig()}
SPEC_FILE_KEYS = ("spec", "format_version", "num_cells", "cell_ids", "environment")  # a sweep.json's keys
NOT_IN_FILES = ("help", "config", "print_config")


def _error(flag: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{flag}: invalid value {value!r}; allowed: {allowed}")


# --- flags ------------------------------------------------------------------------------------------------

def add_flags(p: argparse.ArgumentParser) -> None:
    """This module's flags, each default in its help, and the presets' contents as --help's epilog."""
    for action in p._actions:  # the grid flags come from the preset: say so where their help does not
        if action.default is None and action.help and "default" not in action.help:
            action.help += " (default: the preset's)"
    research = p.add_argument_group("research settings (default: the preset's value, else the one shown)")
    for flag, (part, field, kind, _, _) in CONFIG_FLAGS.items():
        choices = f"; one of: {', '.join(kind)}" if isinstance(kind, tuple) else ""
        research.add_argument(flag, help=f"{CONFIG_HELP[flag]}{choices} (default "
                                         f"{getattr(CONFIG_DEFAULTS[part], field)})")
    research.add_argument("--no-probes", metavar="FAMILIES",
                          help=f"turn probe families off, comma-separated from: {', '.join(PROBE_FAMILIES)} "
                               "(default: grads, activations, attention, jacobian, alignment on)")
    outputs = p.add_argument_group("outputs beside the run directory")
    outputs.add_argument("--log", default="", help="metric sinks, comma-separated: tensorboard (<out>/tensorboard/;"
                                                   " pip install 'jaxnorm[tensorboard]'), wandb (W&B runs grouped "
                                                   "by sweep; pip install 'jaxnorm[wandb]') (default: none)")
    outputs.add_argument("--save-params", default="none",
                         help="orbax checkpoints of each seed in its cell's directory: none, final (parameters "
                              "and optimizer state), init+final (also the initial parameters); load with "
                              "jaxnorm.load_params (default none)")
    outputs.add_argument("--mirror", help="a folder that keeps a copy of the run directory, updated after each "
                                          "cell (e.g. Google Drive on Colab) (default: none)")
    files = p.add_argument_group("spec files")
    files.add_argument("--config", metavar="FILE", help="a run's sweep.json (reruns that spec), or a .toml/.json "
                                                        "file whose keys are these flags' names; flags override it")
    files.add_argument("--print-config", action="store_true", help="print the resolved spec as JSON and exit")
    p.epilog = presets_epilog()


def _non_default(cfg: Any) -> str:
    default = type(cfg)()
    return " ".join(f"{k}={v}" for k, v in vars(cfg).items() if getattr(default, k) != v and k != "progress")


def presets_epilog() -> str:
    """Each preset's grid and the config values it sets (everything else is the config default)."""
    from jaxnorm import axes
    from jaxnorm.sweep_spec import PRESETS

    lines = ["presets (a flag overrides the preset's value; `--preset NAME --print-config` prints all of it):"]
    for name, make in PRESETS.items():
        spec = make()
        lines.append(f"  {name}: {(make.__doc__ or '').strip().splitlines()[0]}")
        lines.append("    " + " | ".join(f"{a} {','.join(map(str, getattr(spec, a)))}" for a in axes.fields())
                     + f" | seeds {spec.seeds}")
        lines.append("    " + "; ".join(f"{part}: {_non_default(getattr(spec, part)) or '(defaults)'}"
                                        for part in ("model", "optim", "train", "probe")))
    return "\n".join(lines)


def _number(flag: str, text: str, kind: type, low: float, high: float | None) -> int | float:
    bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
    try:
        value = kind(text)
    except ValueError:
        raise _error(flag, text, f"{'an integer' if kind is int else 'a finite number'} {bounds}") from None
    if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
        raise _error(flag, text, f"{'an integer' if kind is int else 'a finite number'} {bounds}")
    return value


def apply_flags(args: argparse.Namespace, spec):
    """`spec` with this module's research settings applied; ConfigError naming the flag on a bad value."""
    parts: dict[str, dict[str, Any]] = {"model": {}, "optim": {}, "train": {}, "probe": {}}
    for flag, (part, field, kind, low, high) in CONFIG_FLAGS.items():
        text = getattr(args, flag[2:].replace("-", "_"))
        if text is None:
            continue
        if isinstance(kind, tuple):
            if text not in kind:
                raise _error(flag, text, ", ".join(kind))
            parts[part][field] = text
        else:
            parts[part][field] = _number(flag, text, kind, low, high)
    if args.no_probes is not None:
        families = [f.strip() for f in args.no_probes.split(",")]
        if not all(f in PROBE_FAMILIES for f in families):
            raise _error("--no-probes", args.no_probes, f"comma-separated names from {', '.join(PROBE_FAMILIES)}")
        parts["probe"].update({f: False for f in families})
    return spec.replace(**{part: getattr(spec, part).replace(**changes) for part, changes in parts.items()})


def outputs_from(args: argparse.Namespace, out: str):
    """The CellOutputs of --save-params, --log and --mirror (None when none is asked for), checked: ValueError
    naming the flag, ImportError naming the extra to install."""
    from jaxnorm.cell_outputs import CellOutputs

    outputs = CellOutputs(save_params=args.save_params, log=args.log, mirror=args.mirror)
    if outputs == CellOutputs():
        return None
    outputs.check(out)
    return outputs


# --- spec files -----------------------------------------------------------------------------------------

def _flag_of(key: str, parser: argparse.ArgumentParser) -> tuple[str, argparse.Action]:
    flags = {a.option_strings[0]: a for a in parser._actions
             if a.option_strings and a.dest not in NOT_IN_FILES}
    flag = "--" + str(key).replace("_", "-")
    if flag not in flags:
        allowed = ", ".join(sorted(f[2:] for f in flags))
        raise ConfigError(f"--config: unknown key {key!r}; allowed keys: {allowed}")
    return flag, flags[flag]


def _tokens(key: str, value: Any, parser: argparse.ArgumentParser) -> list[str]:
    flag, action = _flag_of(key, parser)
    if action.nargs == 0:  # a switch: true sets it; false is its default
        if not isinstance(value, bool):
            raise _error(f"--config: {key}", value, "true or false")
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, ",".join(map(str, value))]
    if isinstance(value, (bool, dict)) or value is None:
        raise _error(f"--config: {key}", value, "a string, a number or a list of them")
    return [flag, str(value)]


def read_spec_file(path: str) -> dict[str, Any]:
    """The file's top-level table; ConfigError (one line naming --config) if it cannot be read."""
    p = Path(path)
    if p.suffix not in (".toml", ".json"):
        raise _error("--config", path, "a .toml or .json file (or a run's sweep.json)")
    try:
        data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config: cannot read {path!r} ({getattr(e, 'strerror', None) or type(e).__name__}); "
                          "allowed: a readable .toml or .json file") from None
    except ValueError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--config: {path!r} is not valid {p.suffix[1:].upper()} ({reason})") from None
    if not isinstance(data, dict):
        raise _error("--config", path, "a file holding one object (a table) of keys")
    return data


def expand_config(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], Any]:
    """(argv with a flag file's flags put first, the resolved spec of a sweep.json or None)."""
    path, rest = None, []
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    if path is None:
        return argv, None
    data = read_spec_file(path)
    if "spec" not in data:
        return [t for key, value in data.items() for t in _tokens(key, value, parser)] + rest, None
    from jaxnorm.sweep_spec import spec_from_dict

    unknown = sorted(set(data) - set(SPEC_FILE_KEYS))
    if unknown:
        raise ConfigError(f"--config: unknown key {unknown[0]!r} in a resolved spec; allowed keys: "
                          f"{', '.join(SPEC_FILE_KEYS)}")
    if any(t == "--preset" or t.startswith("--preset=") for t in rest):
        raise _error("--preset", "with --config of a resolved spec", "one of them: the spec replaces the preset")
    try:
        spec = spec_from_dict(data["spec"])
    except (TypeError, AttributeError):
        raise _error("--config", path, "a sweep.json whose spec is an object") from None
    out = [] if Path(path).name != "sweep.json" else ["--out", str(Path(path).parent)]
    return out + rest, spec


def print_config(spec) -> str:
    """The resolved spec as JSON, in sweep.json's form (so `--config` reads it back), with its cell ids."""
    from jaxnorm.rundir import FORMAT_VERSION
    from jaxnorm.sweep_spec import expand, spec_to_dict

    ids = [c.cell_id for c in expand(spec)]
    return json.dumps({"format_version": FORMAT_VERSION, "spec": spec_to_dict(spec), "num_cells": len(ids),
                       "cell_ids": ids}, indent=1)
