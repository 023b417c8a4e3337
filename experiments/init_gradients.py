"""Per-layer gradients and Jacobians at initialisation for every block at depths 2..64 (no training).

    python -m experiments.init_gradients [--out runs/init] [any depth_sweep flag]

The `init` preset of `experiments.depth_sweep` (TrainConfig.steps = 0); how long it takes:
benchmarks/presets.md.
"""

import sys

from experiments import depth_sweep

if __name__ == "__main__":
    sys.exit(depth_sweep.main(["--preset", "init", *sys.argv[1:]]))
