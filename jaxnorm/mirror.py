"""`--mirror DIR`: a copy of the run directory kept up to date after each cell (Google Drive on Colab, a home
folder on a cluster node's scratch), so losing the machine loses no finished cell.

The sweep itself runs in the local run directory (its locks, hard links and renames need a local file
system, which a network or FUSE mount may not give); after each cell the files that changed are copied
over, each to a temporary name then renamed, and a cell's summary.json after its other files, so the copy
never holds a cell that looks finished but is not. Locks and temporary files are not copied. To resume on a
new machine, copy the mirror back (`mirror(DIR, OUT)`) and rerun the same command.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SKIP_FOLDERS = {".locks"}


def _files(src: Path) -> list[Path]:
    """Files to copy, relative to `src`: no locks, no temporaries; each summary.json after everything else."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FOLDERS and not d.startswith("."))
        found += [Path(folder, f).relative_to(src) for f in sorted(files) if not f.startswith(".")]
    return sorted(found, key=lambda p: (p.name == "summary.json", str(p)))


def _same(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except FileNotFoundError:
        return False
    return sa.st_size == sb.st_size and int(sa.st_mtime) <= int(sb.st_mtime)


def mirror(src: str | Path, dst: str | Path) -> list[str]:
    """Copy every file of `src` that `dst` lacks or holds in another size or an older version into `dst`;
    returns the relative paths copied."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ValueError(f"mirror: {str(src)!r} is not a directory; allowed: a run directory")
    copied = []
    for rel in _files(src):
        target = dst / rel
        if _same(src / rel, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}.mirror.tmp"
        shutil.copy2(src / rel, tmp)
        os.replace(tmp, target)
        copied.append(str(rel))
    return copied
