"""Redraw a run directory's figures and report.md.

    python scripts/plot_sweep.py runs/quick        # -> runs/quick/figures/*.png, runs/quick/report.md

Exits 2 with one line `error: ...` if the directory is not a run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from jaxnorm import plots, report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a directory written by jaxnorm.sweep.run")
    args = parser.parse_args(argv)
    try:
        paths = plots.draw_all(args.run_dir)
    except plots.NotARunDir as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    print(report.write_report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
