"""The columns of a results table (`jaxnorm.results.load`: one row per cell and seed), by what they are.

Identity columns (the grid axes and a few resolved config values) name a cell; timing columns are wall-clock
measurements of the machine, not results; every other numeric column is a per-seed result that
`jaxnorm.aggregate` summarises over seeds.
"""

AXIS_COLUMNS = ["depth", "block", "norm", "attention", "optimizer", "clip", "lr"]
CONFIG_COLUMNS = {"train": ["task", "steps", "batch_size", "seq_len", "num_symbols"],
                  "model": ["d_model", "num_heads", "d_ff", "vocab_size"]}
TIMING_COLUMNS = ["compile_s", "run_s", "steps_per_s", "wall_s"]
# The axes a learning-rate sensitivity curve is grouped by (every axis but lr).
GROUP_COLUMNS = ["block", "depth", "optimizer", "norm", "attention", "clip"]


def identity_columns() -> list[str]:
    """cell_id, the axes and the config columns, in the order results tables show them."""
    return ["cell_id", *AXIS_COLUMNS, *[c for cs in CONFIG_COLUMNS.values() for c in cs]]
