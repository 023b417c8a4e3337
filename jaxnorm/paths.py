"""Names of pytree leaves by their path: the one place that knows how NNX state paths look.

Metric names and parameter groups come from these paths rather than being typed by hand, so a new
sub-module shows up in every per-layer metric without further code.
"""

from __future__ import annotations

from typing import Any


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """('blocks', 'attn', 'query', 'kernel') for a leaf path; drops NNX's trailing `.value` attribute."""
    names = []
    for k in path:
        if hasattr(k, "key"):
            names.append(str(k.key))
        elif hasattr(k, "idx"):
            names.append(str(k.idx))
        elif hasattr(k, "name") and k.name != "value":
            names.append(str(k.name))
    return tuple(names)


def path_string(path: tuple[Any, ...]) -> str:
    return "/".join(path_names(path))
