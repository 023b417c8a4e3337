"""Is a finished cell on disk what its run wrote? Cell ids, file manifests and the checks that read them.

A finished cell's summary.json lists the size and sha256 of each of the cell's other files (`manifest`):
CELL_FILES, and the files a run wrote beside them (its checkpoints, `jaxnorm.checkpoints`).
Resuming checks every finished cell in full (`verify_cell`: sizes, hashes, and that config.json hashes to
the cell's id) and redoes a damaged one; reading results checks the cheap part (`read_summary` plus file
sizes) on every load and the hash of a file when it reads that file. A cell id read from disk is never
trusted as a path: it must look like `sweep_spec.make_cell_id`'s output, with no path separator and no
`..`, and equal the name of the directory it was read from.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

# The files of a cell that summary.json's manifest covers (summary.json is written last, after them).
CELL_FILES = ("config.json", "metrics.jsonl", "layers.npz")
# sweep_spec.make_cell_id: readable axes joined by "-", then 8 hex digits of the configs' sha256.
CELL_ID = re.compile(r"[A-Za-z0-9_.+-]{1,200}-[0-9a-f]{8}")
# Names of the further files a manifest may list: relative paths inside the cell's checkpoints/ folder.
EXTRA_FILE = re.compile(r"checkpoints(/[A-Za-z0-9_.+-]{1,200}){1,8}")


class DamagedCell(ValueError):
    """A cell's files are missing, truncated, corrupt or not the cell's; the message is one line naming
    the cell and the file."""

    def __init__(self, cell_id: str, file: str, problem: str):
        super().__init__(f"cell {cell_id}: {file} {problem}")
        self.cell_id, self.file, self.problem = cell_id, file, problem


def is_valid_cell_id(cell_id: Any) -> bool:
    """True for a string shaped like a cell id: safe to join to a path (no separator, no `..`)."""
    return (isinstance(cell_id, str) and CELL_ID.fullmatch(cell_id) is not None
            and ".." not in cell_id and not cell_id.startswith("."))


def check_cell_id(cell_id: Any) -> str:
    """`cell_id` if valid, else DamagedCell (so that a crafted id never reaches the file system)."""
    if not is_valid_cell_id(cell_id):
        raise DamagedCell(repr(cell_id)[:80], "cell id", "is not a cell id (expected <axes>-<8 hex digits>, "
                          "no path separators)")
    return cell_id


def file_record(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of one file."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def is_valid_extra_file(name: Any) -> bool:
    """True for a name a manifest may list beside CELL_FILES: a path inside checkpoints/, without `..`."""
    return (isinstance(name, str) and EXTRA_FILE.fullmatch(name) is not None
            and not any(part.startswith(".") for part in name.split("/")))


def manifest(cell_dir: Path, extra: tuple[str, ...] | list[str] = ()) -> dict[str, dict[str, Any]]:
    """File name -> file_record for each of CELL_FILES and the `extra` files (relative paths), stored in
    summary.json."""
    for name in extra:
        if not is_valid_extra_file(name):
            raise ValueError(f"manifest: invalid file name {name!r}; allowed: a path inside checkpoints/")
    return {name: file_record(Path(cell_dir) / name) for name in (*CELL_FILES, *extra)}


def listed_files(summary: dict[str, Any]) -> list[str]:
    """Every file a cell's summary.json vouches for: CELL_FILES, then the valid further names its manifest lists
    (a name that could leave the cell's directory is DamagedCell, never a path)."""
    extra = [n for n in (summary.get("files") or {}) if n not in CELL_FILES]
    bad = [n for n in extra if not is_valid_extra_file(n)]
    if bad:
        raise DamagedCell(summary["cell_id"], "summary.json", f"lists a file outside the cell ({str(bad[0])[:80]!r})")
    return [*CELL_FILES, *sorted(extra)]


def read_summary(cell_dir: Path) -> dict[str, Any]:
    """A cell's summary.json, checked to be a summary of this very cell; DamagedCell otherwise."""
    cell_dir = Path(cell_dir)
    cell_id = check_cell_id(cell_dir.name)
    try:
        summary = json.loads((cell_dir / "summary.json").read_bytes())
    except FileNotFoundError:
        raise DamagedCell(cell_id, "summary.json", "is missing (the cell is not finished)") from None
    except (OSError, ValueError) as e:
        raise DamagedCell(cell_id, "summary.json", f"is unreadable ({type(e).__name__})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("per_seed"), list) \
            or not isinstance(summary.get("cell"), dict):
        raise DamagedCell(cell_id, "summary.json", "is not a cell summary")
    if summary.get("cell_id") != cell_id:
        raise DamagedCell(cell_id, "summary.json", f"belongs to another cell ({str(summary.get('cell_id'))[:80]!r})")
    return summary


def check_file(cell_dir: Path, summary: dict[str, Any], name: str, data: bytes | None = None) -> None:
    """DamagedCell unless `name` exists with the size (and, given its bytes, the hash) the manifest says."""
    path = Path(cell_dir) / name
    record = (summary.get("files") or {}).get(name)
    if data is None and not path.is_file():
        raise DamagedCell(summary["cell_id"], name, "is missing")
    if not isinstance(record, dict):
        return  # written before manifests existed: presence is all that can be checked
    size = len(data) if data is not None else path.stat().st_size
    if size != record.get("bytes"):
        raise DamagedCell(summary["cell_id"], name, f"is truncated or changed ({size} bytes, "
                          f"{record.get('bytes')} written)")
    if data is not None and hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise DamagedCell(summary["cell_id"], name, "is corrupt (its sha256 differs from the one written)")


def read_checked(cell_dir: Path, summary: dict[str, Any], name: str) -> bytes:
    """The bytes of one cell file, checked against the manifest (DamagedCell if missing or different)."""
    try:
        data = (Path(cell_dir) / name).read_bytes()
    except OSError:
        raise DamagedCell(summary["cell_id"], name, "is missing or unreadable") from None
    check_file(cell_dir, summary, name, data)
    return data


def check_sizes(cell_dir: Path) -> dict[str, Any]:
    """The summary, after the cheap checks (summary valid, every file present with its size)."""
    summary = read_summary(cell_dir)
    for name in listed_files(summary):
        check_file(cell_dir, summary, name)
    return summary


def verify_cell(cell_dir: Path) -> dict[str, Any]:
    """The summary, after the full check: every listed file's size and hash, and config.json hashes to the id."""
    from jaxnorm.sweep_spec import make_cell_id

    summary = read_summary(cell_dir)
    for name in listed_files(summary):  # one file in memory at a time: checkpoints can be large
        data = read_checked(cell_dir, summary, name)
        if name == "config.json":
            config_bytes = data
    try:
        config = json.loads(config_bytes)
        expected = make_cell_id(config["cell"], {k: config[k] for k in ("model", "optim", "train", "probe")})
    except (ValueError, KeyError, TypeError):
        raise DamagedCell(summary["cell_id"], "config.json", "is not a cell config") from None
    if expected != summary["cell_id"]:
        raise DamagedCell(summary["cell_id"], "config.json", f"hashes to another cell id ({expected})")
    return summary
