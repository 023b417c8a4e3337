"""Redraw a run directory's figures and report.md.

    python scripts/plot_sweep.py runs/quick        # -> runs/quick/figures/*.png, runs/quick/report.md

Exits 2 with one line `error: ...` if the directory is not a run directory (or its sweep.json is unreadable).
A damaged cell (a missing, truncated or corrupt file) is left out with one `warning: ...` line naming the cell
and the file; a failure while writing (a full disk) exits 1 with one line and leaves no temporary file.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jaxnorm import figures, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a directory written by jaxnorm.sweep.run")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        paths = figures.draw_all(args.run_dir)
        written = report.write_report(args.run_dir)
    except ValueError as e:  # NotARunDir
        print(f"error: run_dir: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: run_dir: writing into {args.run_dir!r} failed ({e.strerror or e}); rerun to draw them",
              file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
