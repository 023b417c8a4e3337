"""The PyTorch reference (scripts/torch_*.py) as a peer of jaxnorm's programs in a benchmark.

The reference runs in its own process (torch and XLA never share one; it may be another interpreter), and
`TorchPeer` drives scripts/torch_serve.py so that its timed steps run in turn with jaxnorm's, repeat by
repeat (`timing.interleaved_timer_medians`): both see the same machine load. Its timers report the worker's
own clock, so the pipe between the processes is not timed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxnorm.benchmarking.timing import Timer
from jaxnorm.config import ModelConfig, OptimConfig, TrainConfig

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
VARIANTS = ("eager", "compile")  # torch_reference.VARIANTS: the model eager, or under torch.compile


def torch_interpreter(arg: str | None) -> tuple[str | None, str]:
    """(the interpreter to run the reference with, or None; why not). `arg`: --torch-python, else this
    interpreter if it can import torch (found without importing it here)."""
    if arg:
        return arg, ""
    if importlib.util.find_spec("torch") is None:
        return None, ("torch is not importable here (install the [bench] extra, or pass --torch-python PATH to an "
                      "interpreter that has it)")
    return sys.executable, ""


def model_flags(model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig) -> list[str]:
    """torch_reference.py's flags for jaxnorm's model, task and optimizer (the schedule's horizon: its steps)."""
    return ["--d-model", str(model_cfg.d_model), "--heads", str(model_cfg.num_heads), "--d-ff", str(model_cfg.d_ff),
            "--seq-len", str(train_cfg.seq_len), "--batch", str(train_cfg.batch_size),
            "--num-symbols", str(train_cfg.num_symbols), "--lr", repr(optim_cfg.lr),
            "--weight-decay", repr(optim_cfg.weight_decay), "--warmup", str(optim_cfg.warmup_steps),
            "--total-steps", str(train_cfg.steps)]


class TorchPeer:
    """A running scripts/torch_serve.py: `prepare` a model, then `timer` its steps. Use as a context manager."""

    @classmethod
    def start(cls, python: str, flags: list[str]) -> tuple["TorchPeer | None", str]:
        """(a started peer, "") or (None, why it could not start: no torch in that interpreter, say)."""
        try:
            return cls(python, flags), ""
        except (OSError, RuntimeError) as e:
            return None, str(e).strip().splitlines()[-1][:300]

    def __init__(self, python: str, flags: list[str]):
        # stderr goes to a file: torch.compile can write more warnings than a pipe holds, which would block it.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, "-W", "ignore", str(SCRIPTS / "torch_serve.py"), *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.about = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            lines = self.log.read().strip().splitlines() or ["no output"]
            raise RuntimeError(f"the PyTorch worker exited ({self.proc.wait()}): {lines[-1]}")
        return json.loads(line)

    def _ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def prepare(self, key: str, block: str, depth: int, variant: str, warmup_steps: int) -> dict:
        """Build and warm up (compile, for torch.compile) one model: {"ok": True, "optimizer"} or {"ok": False,
        "reason"}."""
        return self._ask(op="prepare", id=key, block=block, depth=depth, variant=variant, warmup_steps=warmup_steps)

    def timer(self, key: str, steps: int) -> Timer:
        """A timer of `steps` steps of a prepared model, by the worker's clock."""
        return lambda: self._ask(op="time", id=key, steps=steps)["seconds"]

    def drop(self, key: str) -> None:
        self._ask(op="drop", id=key)

    def __enter__(self) -> "TorchPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
