"""The columns of a results table (`jaxnorm.results.load`: one row per cell and seed), by what they are.

Identity columns (the grid axes and a few resolved config values) name a cell; timing columns are wall-clock
measurements of the machine, not results; every other numeric column is a per-seed result that
`jaxnorm.aggregate` summarises over seeds. The axis columns come from the axis table (`jaxnorm.axes`), read on
every call so that a registered axis counts.
"""

from jaxnorm import axes

CONFIG_COLUMNS = {"train": ["task", "steps", "batch_size", "seq_len", "num_symbols"],
                  "model": ["d_model", "num_heads", "d_ff", "vocab_size"], "data": ["context_free_loss"]}
TIMING_COLUMNS = ["compile_s", "run_s", "steps_per_s", "wall_s"]
# LR sensitivity's groups lead with these axes, in this order (the order of its tables' columns and rows).
GROUP_LEAD = ("block", "depth", "optimizer")


def axis_columns() -> list[str]:
    """The grid axes' columns in grid order: depth, block, norm, attention, optimizer, clip, lr."""
    return axes.names()


def text_columns() -> list[str]:
    """The columns that hold names, not numbers (None in them is not read as NaN)."""
    return ["cell_id", *axes.names("name"), "task", "nonfinite_what"]


def group_columns() -> list[str]:
    """The axes a learning-rate sensitivity curve is grouped by: every axis but lr, GROUP_LEAD first."""
    return [*GROUP_LEAD, *(c for c in axis_columns() if c not in GROUP_LEAD and c != "lr")]


def identity_columns() -> list[str]:
    """cell_id, the axes and the config columns, in the order results tables show them."""
    return ["cell_id", *axis_columns(), *[c for cs in CONFIG_COLUMNS.values() for c in cs]]
