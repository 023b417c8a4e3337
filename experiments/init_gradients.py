"""Per-layer gradients and Jacobians at initialisation for every block at depths 2..64 (no training).

    python -m experiments.init_gradients [--out runs/init] [any depth_sweep flag]

The `init` preset of `experiments.depth_sweep` (TrainConfig.steps = 0); about 4 minutes on a 2-core CPU
with an empty compilation cache.
"""

import sys

from experiments import depth_sweep

if __name__ == "__main__":
    sys.exit(depth_sweep.main(["--preset", "init", *sys.argv[1:]]))
