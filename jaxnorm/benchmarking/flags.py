"""Command-line flags of the benchmark scripts: a bad value is one line naming the flag and what is allowed,
exit status 2, before anything is measured."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"error: {message}\n")


def names(parser: argparse.ArgumentParser, flag: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of names from `allowed` (at least one)."""
    got = tuple(x for x in text.split(",") if x)
    if not got or any(x not in allowed for x in got):
        parser.error(f"{flag}: invalid value {text!r}; allowed: comma-separated {', '.join(allowed)}")
    return got


def positive_ints(parser: argparse.ArgumentParser, flag: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 (at least one)."""
    try:
        got = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        got = ()
    if not got or min(got) < 1:
        parser.error(f"{flag}: invalid value {text!r}; allowed: comma-separated integers >= 1, e.g. 2,8")
    return got


def positive_int(parser: argparse.ArgumentParser, flag: str, text: str) -> int:
    """One integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        parser.error(f"{flag}: invalid value {text!r}; allowed: an integer >= 1")
    return value


def positive_float(parser: argparse.ArgumentParser, flag: str, text: str) -> float:
    """One finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        parser.error(f"{flag}: invalid value {text!r}; allowed: a number > 0")
    return value


def fractions(parser: argparse.ArgumentParser, flag: str, text: str) -> list[float]:
    """A comma-separated list of numbers in (0, 1] (at least one)."""
    try:
        got = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        got = []
    if not got or not all(0 < x <= 1 for x in got):
        parser.error(f"{flag}: invalid value {text!r}; allowed: comma-separated numbers in (0, 1], e.g. 1,0.4")
    return got


def preset_name(parser: argparse.ArgumentParser, flag: str, text: str) -> str:
    """The name of one of jaxnorm's presets (jaxnorm.sweep_spec.PRESETS)."""
    from jaxnorm.sweep_spec import PRESETS

    if text not in PRESETS:
        parser.error(f"{flag}: invalid value {text!r}; allowed: {', '.join(PRESETS)}")
    return text
