"""The grid axes, declared once: one `Axis` per dimension a sweep can vary.

An entry says everything the code needs to know about its axis: the `SweepSpec` field that lists its values
(`depths`), the name of one value (`depth`: the `Cell` field, the results column, the name in tables and
figures), the command-line flag and how one item of its text parses, which values are allowed, which values
are the same (repeats are merged), which config fields a value sets, and how a value prints in the cell id and
in figure legends. The spec and its expansion (`jaxnorm.sweep_spec`), the results columns (`jaxnorm.columns`),
the report, the figures and the command line read this table instead of listing the axes themselves, so a new
axis is one entry in `AXES` plus its tests.

`AXES` is read on every use, never copied at import, so a registration (a test's `monkeypatch.setitem`)
counts at once. Its order is the grid's expansion order (the last axis varies fastest) and the order of the
cell id's parts, the results columns, the spec's fields and the flags.
This module imports nothing heavy: the command line checks a flag without loading JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from jaxnorm.config import (ATTENTIONS, CLIPS, LIMITS, FLOAT32_MAX, FLOAT32_TINY, NORMS, OPTIMIZERS, ConfigError,
                            check_int, check_lr)
from jaxnorm.placements import PLACEMENTS, norm_kind

KINDS = ("int", "float", "name")  # numbers sort in figures and stay numeric in results; names are text
# How the training figures show an axis (loss vs depth, the stability map; jaxnorm.plots_training). Block is
# also the stability map's rows.
FIGURE_ROLES = {
    "x": "the x axis of loss vs depth and of the stability map",
    "line": "one line per value in loss vs depth; pooled in the stability map",
    "panel": "one panel per value in loss vs depth and in the stability map",
    "best": "loss vs depth takes the value with the lowest loss at each point; pooled in the stability map",
}
CLIP_FORMS = "none, global_norm:<c>, value:<c>, agc:<c> (c a number > 0)"


def spec_error(field: str, flag: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error of a SweepSpec field, naming its flag and what is allowed."""
    return ConfigError(f"SweepSpec.{field} ({flag}): invalid value {value!r}; allowed: {allowed}")


@dataclasses.dataclass(frozen=True)
class Axis:
    """Everything about one grid axis (see the module docstring)."""

    field: str                          # the SweepSpec field listing the values: "depths"
    name: str                           # one value: Cell field, results column, table and figure name: "depth"
    flag: str                           # the command-line flag setting `field`: "--depths"
    default: tuple                      # SweepSpec's values when the field is not given
    kind: str                           # one of KINDS
    allowed: Callable[[], str]          # the allowed values in words (read when asked: registries can grow)
    valid: Callable[[Any], bool]        # whether one value is allowed
    sets: Callable[[Any], dict[str, dict[str, Any]]]  # a value -> config part -> the fields it sets
    noun: str                           # the values in words, for captions: "learning rates"
    parse: Callable[[str], Any] = str   # one item of the flag's comma-separated text -> a value (ValueError)
    same: Callable[[Any], Any] = lambda v: v          # a key: values with equal keys are one value (merged)
    # the value a cell records, given the values of the axes before this one (a norm-free block's norm is "none")
    resolve: Callable[[Any, dict[str, Any]], Any] = lambda v, cell: v
    id_text: Callable[[Any], str] = str               # the value's part of the cell id
    legend: Callable[[Any], str] = str                # the value in figure legends
    figure: str = "line"                # one of FIGURE_ROLES
    help: str | None = None             # the flag's --help; None: "comma-separated, from: <allowed>"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Axis.kind: invalid value {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.figure not in FIGURE_ROLES:
            raise ValueError(f"Axis.figure: invalid value {self.figure!r}; allowed: {', '.join(FIGURE_ROLES)}")

    def error(self, value: Any, allowed: str | None = None) -> ConfigError:
        return spec_error(self.field, self.flag, value, self.allowed() if allowed is None else allowed)

    def flag_help(self) -> str:
        return self.help if self.help is not None else f"comma-separated, from: {self.allowed()}"


def _passes(check: Callable[[], None]) -> bool:
    """Whether one of config's checks (which raise ConfigError) accepts its value."""
    try:
        check()
    except ConfigError:
        return False
    return True


def _clip_or_none(text: Any) -> tuple[str, float] | None:
    if not isinstance(text, str):
        return None
    if text == "none":
        return "none", 1.0
    kind, sep, value = text.partition(":")
    try:
        c = float(value)
    except ValueError:
        return None
    if not sep or kind not in CLIPS or kind == "none" or not (math.isfinite(c) and c > 0):
        return None
    return kind, c


def parse_clip(text: str) -> tuple[str, float]:
    """'none' | 'global_norm:1.0' | 'value:0.5' | 'agc:0.01' -> (OptimConfig.clip, OptimConfig.clip_value)."""
    parsed = _clip_or_none(text)
    if parsed is None:
        raise spec_error("clips", "--clip", text, CLIP_FORMS)
    return parsed


def _clip_sets(text: str) -> dict[str, dict[str, Any]]:
    kind, value = parse_clip(text)
    return {"optim": {"clip": kind, "clip_value": value}}


def _choice(field: str, name: str, default: tuple, registry: Callable[[], tuple[str, ...]], part: str,
            noun: str, **kw: Any) -> Axis:
    """An axis over the names of a registry, setting the config field of its own name."""
    return Axis(field, name, f"--{field}", default, "name", allowed=lambda: ", ".join(registry()),
                valid=lambda v: v in registry(), sets=lambda v: {part: {name: v}}, noun=noun, **kw)


def _depth_ok(v: Any) -> bool:
    return _passes(lambda: check_int("SweepSpec", "depth", v, 1))


def _parse_depth(text: str) -> int:
    """A depth from the flag's text; out of range is no depth (the flag's error then names the whole list)."""
    depth = int(text)
    if not _depth_ok(depth):
        raise ValueError(text)
    return depth


def _lr_ok(v: Any) -> bool:
    return _passes(lambda: check_lr("SweepSpec", "lr", v))


AXES: dict[str, Axis] = {a.name: a for a in (
    Axis("depths", "depth", "--depths", (2, 8, 24), "int", allowed=lambda: f"integers >= 1 and <= {LIMITS['depth']}",
         valid=_depth_ok, sets=lambda v: {"model": {"depth": v}}, noun="depths", parse=_parse_depth,
         id_text=lambda v: f"L{v}", legend=lambda v: f"L={v}", figure="x",
         help="comma-separated depths L >= 1, e.g. 2,8,32"),
    # PLACEMENTS is read live: a block registered in jaxnorm.placements is an allowed value at once
    _choice("blocks", "block", ("pre_ln",), lambda: tuple(PLACEMENTS), "model", "blocks"),
    # a block without norm layers ignores the norm: one cell with norm "none" instead of one per norm
    _choice("norms", "norm", ("layernorm",), lambda: NORMS, "model", "norms",
            resolve=lambda v, cell: norm_kind(cell["block"], v)),
    _choice("attentions", "attention", ("dot",), lambda: ATTENTIONS, "model", "attentions"),
    _choice("optimizers", "optimizer", ("adamw",), lambda: OPTIMIZERS, "optim", "optimizers", figure="panel"),
    Axis("clips", "clip", "--clip", ("none",), "name", allowed=lambda: CLIP_FORMS,
         valid=lambda v: _clip_or_none(v) is not None, sets=_clip_sets, noun="clippings", same=parse_clip,
         id_text=lambda v: v.replace(":", ""), figure="panel",
         help=f"comma-separated clippings: none or <kind>:<c>, kind from {', '.join(c for c in CLIPS if c != 'none')}"
              ", e.g. none,global_norm:1.0,value:0.5,agc:0.01"),
    # the cell records float(lr), so a spec's 1 and 1.0 are one cell
    Axis("lrs", "lr", "--lrs", (1e-3,), "float", valid=_lr_ok, sets=lambda v: {"optim": {"lr": v}},
         allowed=lambda: f"numbers > 0 that float32 represents (>= {FLOAT32_TINY:.4g} and <= {FLOAT32_MAX:.4g})",
         noun="learning rates", parse=float, same=float, resolve=lambda v, cell: float(v),
         id_text=lambda v: f"lr{v:g}", legend=lambda v: f"lr={v:g}", figure="best",
         help="comma-separated peak learning rates > 0, e.g. 1e-3,3e-3"),
)}


def axes() -> list[Axis]:
    """The registered axes, in grid order."""
    return list(AXES.values())


def names(kind: str | None = None) -> list[str]:
    """The axes' value names (Cell fields, results columns), in grid order; only those of `kind` if given."""
    return [a.name for a in AXES.values() if kind is None or a.kind == kind]


def fields() -> list[str]:
    """The SweepSpec fields of the axes, in grid order."""
    return [a.field for a in AXES.values()]


def by_field(field: str) -> Axis:
    """The axis whose SweepSpec field is `field` (KeyError naming the fields for another name)."""
    for a in AXES.values():
        if a.field == field:
            return a
    raise KeyError(f"axis field: invalid value {field!r}; allowed: {', '.join(fields())}")


def with_figure(role: str) -> list[str]:
    """The names of the axes the training figures show in `role` (one of FIGURE_ROLES), in grid order."""
    return [a.name for a in AXES.values() if a.figure == role]
