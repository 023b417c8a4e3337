"""`--log tensorboard`: a cell's points as TensorBoard event files, written with tensorboardX (no TensorFlow).

`<out>/tensorboard/<cell_id>/seed<s>/events.out.tfevents.*`, one run per (cell, seed), so `tensorboard
--logdir <out>/tensorboard` lists them by cell and seed. Scalars and histogram tags: `jaxnorm.sink_points`.
Images: `profiles` at each Jacobian probe step (the first and last profiled steps when the Jacobian probes are
off), one figure of two panels against the layer (log10 of the values): the gradients ‖∂loss/∂θ_l‖ and
‖∂loss/∂x_l‖, and the Jacobian norms ‖∂x_{l+1}/∂x_l‖₂ and ‖·‖_F/√dim. Drawing a figure costs far more than
writing scalars, so images are drawn at probe steps only (the quick preset: 8 per seed), not at every
profiled step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from jaxnorm.sink_points import SeedPoints, profile_histogram

EXTRA = "tensorboard"
FOLDER = "tensorboard"
IMAGE_TAG = "profiles"
PANELS = {"gradients": ("layers/grad_norm/all", "layers/act_grad_norm"),
          "jacobian": ("layers/jac_spectral", "layers/jac_frobenius")}


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"--log tensorboard needs tensorboardX; install it with: pip install "
                          f"'jaxnorm[{EXTRA}]'") from None
    return SummaryWriter


def check_available() -> None:
    _summary_writer()


def _profile_figure(step: int, profiles: dict[str, np.ndarray]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.6), dpi=72)
    for i, (panel, names) in enumerate(PANELS.items()):
        ax = fig.add_subplot(1, len(PANELS), i + 1)
        for name in names:
            if name in profiles and np.all(profiles[name] > 0):  # a log axis: norms of zero are left out
                values = np.log10(profiles[name])  # log10 on a linear axis: a log axis's ticks double the cost
                ax.plot(np.arange(len(values)), values, marker="o", label=name.removeprefix("layers/"))
        ax.set(xlabel="layer", ylabel="log10", title=f"{panel} at step {step}")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.88, wspace=0.25)  # tight_layout costs 0.2 s
    return fig


class Writer:
    """Writes cells into `<out>/tensorboard/`; `write_cell` replaces whatever an earlier export of the same cell
    left, so exporting a cell twice leaves one copy of its points."""

    def __init__(self, out_dir: Path, run_name: str):
        self.root = Path(out_dir) / FOLDER
        self.summary_writer = _summary_writer()

    def write_cell(self, cell_id: str, config: dict, seeds: list[SeedPoints], version: str = "") -> None:
        shutil.rmtree(self.root / cell_id, ignore_errors=True)
        for points in seeds:
            with self.summary_writer(str(self.root / cell_id / f"seed{points.seed}"), flush_secs=3600) as w:
                for tag, step, value in points.scalars:
                    w.add_scalar(tag, value, step)
                for tag, step, values in points.profiles:
                    h = profile_histogram(values)
                    w.add_histogram_raw(tag, 0.0, float(len(values)), h["num"], h["sum"], h["sum_squares"],
                                        h["edges"][1:], h["counts"], step)
                for tag, step, values in points.distributions:
                    w.add_histogram(tag, np.asarray(values, np.float64), step)
                self._images(w, points)

    def _images(self, w, points: SeedPoints) -> None:
        by_step: dict[int, dict[str, np.ndarray]] = {}
        for tag, step, values in points.profiles:
            by_step.setdefault(step, {})[tag] = values
        probed = [t for t, profiles in sorted(by_step.items()) if "layers/jac_spectral" in profiles]
        for step in probed or sorted({min(by_step), max(by_step)} if by_step else ()):
            w.add_figure(IMAGE_TAG, _profile_figure(step, by_step[step]), step, close=False)

    def close(self) -> None:
        pass
