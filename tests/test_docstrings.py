"""Measured times live in benchmarks/, with their machine and date, not in docstrings (where they go stale)."""

import ast
import re
from pathlib import Path

from jaxnorm.sweep_spec import PRESETS

ROOT = Path(__file__).resolve().parents[1]
# A number with a unit of time: "5 min 32 s", "~20 s per cell", "about 4 minutes", "12 minutes to 4".
TIME = re.compile(r"\b\d+(\.\d+)?\s?(ms|s|min|minutes?|h|hours?|seconds?)\b")


def test_the_time_pattern_finds_times_and_nothing_else():
    found = [m.group(0) for m in TIME.finditer("5 min 52 s wall, ~20 s per cell, about 4 minutes, 1 hour; "
                                               "600 steps, 2 seeds, 3 ms")]
    assert found == ["5 min", "52 s", "20 s", "4 minutes", "1 hour", "3 ms"]


def test_preset_docstrings_point_to_their_times_instead_of_holding_them():
    table = (ROOT / "benchmarks" / "presets.md").read_text()
    for name, make in PRESETS.items():
        doc = make.__doc__
        assert "benchmarks/presets.md" in doc and not TIME.search(doc), name
        assert f"--preset {name}" in table or (name == "quick" and "(`quick`)" in table), name


def test_module_docstrings_hold_no_times():
    files = [*ROOT.glob("jaxnorm/*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("scripts/*.py")]
    assert len(files) > 30
    timed = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in files
             for m in TIME.finditer(ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not timed, timed
