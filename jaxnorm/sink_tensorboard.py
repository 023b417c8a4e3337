"""`--log tensorboard`: a cell's points as TensorBoard event files, written with tensorboardX (no TensorFlow).

`<out>/tensorboard/<cell_id>/seed<s>/events.out.tfevents.*`, one run per (cell, seed), so `tensorboard
--logdir <out>/tensorboard` lists them by cell and seed. Scalars and histogram tags: `jaxnorm.sink_points`.
Images: at each step with per-layer profiles, `profiles/gradients` (‖∂loss/∂θ_l‖ and ‖∂loss/∂x_l‖ against
the layer) and `profiles/jacobian` (‖∂x_{l+1}/∂x_l‖₂ and ‖·‖_F/√dim), on a log axis (about 30 ms each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from jaxnorm.sink_points import SeedPoints, profile_histogram

EXTRA = "tensorboard"
FOLDER = "tensorboard"
IMAGES = {"profiles/gradients": ("layers/grad_norm/all", "layers/act_grad_norm"),
          "profiles/jacobian": ("layers/jac_spectral", "layers/jac_frobenius")}


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"--log tensorboard needs tensorboardX; install it with: pip install "
                          f"'jaxnorm[{EXTRA}]'") from None
    return SummaryWriter


def check_available() -> None:
    _summary_writer()


def _profile_figure(tag: str, step: int, curves: dict[str, np.ndarray]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(np.arange(len(values)), values, marker="o", label=name.removeprefix("layers/"))
    ax.set(yscale="log", xlabel="layer", title=f"{tag.removeprefix('profiles/')} at step {step}")
    ax.legend(fontsize=7)
    fig.tight_layout()
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
        for step, profiles in sorted(by_step.items()):
            for image_tag, names in IMAGES.items():
                curves = {n: profiles[n] for n in names if n in profiles and np.all(profiles[n] > 0)}
                if curves:
                    w.add_figure(image_tag, _profile_figure(image_tag, step, curves), step, close=False)

    def close(self) -> None:
        pass
