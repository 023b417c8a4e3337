"""Train a grid with the PyTorch reference, cell by cell and seed by seed: the end-to-end peer of a sweep.

    python scripts/torch_train_grid.py                                   # the `quick` preset's grid
    python scripts/torch_train_grid.py --blocks pre_ln --depths 2 --seeds 1 --total-steps 20

Each (block, depth, seed) trains from scratch for `--total-steps` steps (the schedule's horizon too) with
torch_reference.py's `Reference` (AdamW fused where supported, per-layer gradient norms every step; with
`--threads auto` each cell's thread count is chosen first on a model of its own, and that time counts), moves
the loss to the host every `--log-every` steps and evaluates `--eval-batches` held-out batches every
`--eval-every` steps and at the end, as a jaxnorm cell does; it runs no Jacobian probes and writes no files.
The defaults are the `quick` preset's; scripts/bench.py passes every value from the preset.

Output: one JSON object on stdout: torch's description, the optimizer, and per cell and seed its final
held-out loss and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch_reference import BLOCKS, Parser, Reference, add_model_flags, apply_device_flags, describe, split


def cell_threads(block: str, depth: int, args: argparse.Namespace) -> int:
    """The thread count `--threads` gives this cell (for auto: chosen on a model that is then thrown away)."""
    return Reference(block, depth, args, seed=10**6).choose_threads(args.threads)


def train_cell(block: str, depth: int, seed: int, threads: int, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    ref = Reference(block, depth, args, seed=seed)
    ref.threads = threads
    torch.set_num_threads(threads)
    logged = []
    for step in range(args.total_steps):
        loss = ref.step()
        if step % args.log_every == 0:
            logged.append(float(loss))
            ref.recorded.clear()
        if (step + 1) % args.eval_every == 0 and step + 1 < args.total_steps:
            ref.evaluate(args.eval_batches)
    final_eval = ref.evaluate(args.eval_batches)
    return {"block": block, "depth": depth, "seed": seed, "final_eval_loss": final_eval, "threads": threads,
            "optimizer": ref.optimizer, "seconds": time.perf_counter() - t0}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--blocks", default="post_ln,pre_ln,rezero", help=f"comma-separated, from {', '.join(BLOCKS)}")
    p.add_argument("--depths", type=ints, default=[2, 8, 24])
    p.add_argument("--seeds", type=int, default=2, help="seeds per cell, trained one after another")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=60)
    p.add_argument("--eval-batches", type=int, default=2)
    add_model_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    blocks = split("--blocks", args.blocks, BLOCKS, p)
    for flag in ("seeds", "log_every", "eval_every", "eval_batches", "total_steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: invalid value {getattr(args, flag)}; allowed: an integer >= 1")
    apply_device_flags(p, args)
    t0 = time.perf_counter()
    cells = []
    for block in blocks:
        for depth in args.depths:
            threads = cell_threads(block, depth, args)
            cells += [train_cell(block, depth, seed, threads, args) for seed in range(args.seeds)]
    print(json.dumps({**describe(args), "optimizer": cells[0]["optimizer"], "cells": cells,
                      "seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
