"""What a sweep writes besides its run directory's core files: checkpoints, metric sinks, a mirror.

`jaxnorm.sweep.run(spec, out, outputs=CellOutputs(...))` (the command line's `--save-params`, `--log`,
`--mirror`). None of these is part of the spec: a sweep resumed with other outputs is the same sweep, and
cells finished before keep what they had (a cell's checkpoints are written only when it is trained).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from jaxnorm import checkpoints, exports


@dataclasses.dataclass(frozen=True)
class CellOutputs:
    save_params: str = "none"          # "none", "final" or "init+final" (jaxnorm.checkpoints)
    log: tuple[str, ...] = ()          # metric sinks: "tensorboard", "wandb" (jaxnorm.exports)
    mirror: str | None = None          # a folder kept a copy of the run directory (jaxnorm.mirror)

    def __post_init__(self) -> None:
        checkpoints.check_save_params(self.save_params)
        object.__setattr__(self, "log", exports.parse_sinks(self.log))
        if self.mirror is not None and (not isinstance(self.mirror, (str, Path)) or not str(self.mirror).strip()):
            raise ValueError(f"mirror (--mirror): invalid value {self.mirror!r}; allowed: a folder path")

    @property
    def keep_init(self) -> bool:
        """Whether training must keep the initial parameters (History.init_params)."""
        return self.save_params == "init+final"

    def check(self, out_dir: str | Path) -> None:
        """Before anything runs: the sinks' libraries are installed (else ImportError naming the extra), and the
        mirror is not the run directory itself or inside it."""
        exports.check_available(self.log)
        if self.mirror is not None:
            out, mirror = Path(out_dir).resolve(), Path(self.mirror).resolve()
            if mirror == out or out in mirror.parents:
                raise ValueError(f"mirror (--mirror): invalid value {str(self.mirror)!r}; allowed: a folder "
                                 f"outside the run directory {str(out_dir)!r}")

    def before_summary(self, cell_dir: Path, history: Any) -> list[str]:
        """Called after training a cell, before its summary.json: writes its checkpoints; returns their files."""
        return checkpoints.save(cell_dir, history, self.save_params)

    def after_cell(self, out_dir: str | Path) -> None:
        """Called after each finished cell (and at the end of a sweep): sinks, then the mirror. A failure (W&B
        unreachable, a full or unmounted mirror) is one warning line, not the end of the sweep: the cells are
        saved, and the next cell or a rerun sends what is missing."""
        from jaxnorm.mirror import mirror

        for what, step in (("--log", lambda: exports.export(out_dir, self.log)),
                           ("--mirror", lambda: self.mirror is not None and mirror(out_dir, self.mirror))):
            try:
                step()
            except Exception as e:  # noqa: BLE001 — whatever a sink or file system raises
                reason = (str(e).splitlines() or [""])[0]
                warnings.warn(f"{what}: {type(e).__name__}: {reason}; the cells are saved in {str(out_dir)!r}, "
                              "and the next cell or a rerun of the command sends what is missing", stacklevel=2)
