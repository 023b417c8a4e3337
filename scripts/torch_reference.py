"""PyTorch reference of jaxnorm's train step, for a speed comparison; prints JSON timings.

    python scripts/torch_reference.py --blocks pre_ln,post_ln --depths 4,16,64   # needs torch (extra [bench])
    python scripts/torch_reference.py --variant compile --depths 4
    python scripts/torch_reference.py --tiny

The same encoder as jaxnorm's `pre_ln`, `post_ln` and `rezero` blocks on the `reverse` task: token embedding
(N(0, 1)) + learned positions (N(0, 0.02)); per block multi-head attention with biased Q, K, V, O projections
and 1/√d_k logits, a ReLU MLP (D → F → D), LayerNorm (eps 1e-5) placed as x ← x + F(LN(x)) (pre_ln, plus a
final LN), x ← LN(x + F(x)) (post_ln), or no norm and x ← x + α·F(x) with one α per block, starting at 0
(rezero); xavier-uniform kernels, zero biases; weighted cross-entropy on the answer half; AdamW (weight
decay on kernels and the token embedding only, as jaxnorm's decay mask) with jaxnorm's learning-rate
multiplier: linear warmup from 0, then cosine decay to 0 at `--total-steps`. After every backward the
per-layer gradient norms ‖∂loss/∂θ_l‖ are computed (as jaxnorm's step does every step for its non-finite
bookkeeping). The defaults are the `quick` preset's (scripts/bench.py passes every value from the preset).

PyTorch gets its best form: AdamW(fused=True) where this torch supports it on the device (else its default,
said in the output), with `--variant compile` the model under torch.compile, and on a CPU the number of
intra-op threads that runs the model fastest (`--threads auto`, the default: torch's default where it runs
warm-up steps at least 10% faster than 1 thread, else 1; at the sweep's width each operation is tiny, and on
a CPU shared with other work several threads wait on each other at every operation's barrier, measured 4-5×
slower than one thread on a busy 2-core machine). The step runs on CPU threads or, with `--device cuda`, on
the GPU (batches drawn on the device, torch.cuda.synchronize() before each clock read), timed with
time.perf_counter after warm-up steps, median over repeats of `--steps` steps.

Output: one JSON object on stdout, {"torch": version, "threads": the setting, "device": name, "optimizer":
what AdamW ran as, "variant": ..., "results": [{"block", "depth", "step_s", "threads"}...]}. This script needs
only torch (no JAX), so it can run in another interpreter than jaxnorm's; scripts/torch_serve.py and
scripts/torch_train_grid.py drive the same `Reference`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
from torch import nn

BLOCKS = ("pre_ln", "post_ln", "rezero")
VARIANTS = ("eager", "compile")
DEFAULT_THREADS = torch.get_num_threads()  # before any set_num_threads: torch's own choice


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"error: {message}\n")


class Attention(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h, self.dk = h, d // h
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        heads = lambda y: y.view(B, T, self.h, self.dk).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dk), dim=-1)
        return self.out((probs @ v).transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, kind: str, d: int, h: int, f: int):
        super().__init__()
        self.kind = kind
        self.attn = Attention(d, h)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        if kind == "rezero":  # one gate per block, shared by both sublayers (as jaxnorm's)
            self.alpha = nn.Parameter(torch.zeros(()))
        else:
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "pre_ln":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        if self.kind == "rezero":
            x = x + self.alpha * self.attn(x)
            return x + self.alpha * self.mlp(x)
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class Model(nn.Module):
    def __init__(self, kind: str, depth: int, d: int, h: int, f: int, vocab: int, max_len: int):
        super().__init__()
        self.token_embed = nn.Embedding(vocab, d)
        self.pos_embed = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.blocks = nn.ModuleList(Block(kind, d, h, f) for _ in range(depth))
        self.final_norm = nn.LayerNorm(d, eps=1e-5) if kind == "pre_ln" else nn.Identity()
        self.head = nn.Linear(d, vocab)
        nn.init.normal_(self.token_embed.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def reverse_batch(gen: torch.Generator, batch: int, seq_len: int, symbols: int):
    """jaxnorm's `reverse` task: inputs [s, MASK×n], targets [s, reversed s], only the second half scored.
    Drawn on the generator's device, as jaxnorm draws its batches inside the jitted step."""
    n, device = seq_len // 2, gen.device
    s = torch.randint(0, symbols, (batch, n), generator=gen, device=device)
    inputs = torch.cat([s, torch.full_like(s, symbols)], dim=1)
    targets = torch.cat([s, s.flip(1)], dim=1)
    weights = torch.cat([torch.zeros(batch, n, device=device), torch.ones(batch, n, device=device)], dim=1)
    return inputs, targets, weights


def lr_multiplier(warmup: int, total: int):
    """jaxnorm's warmup_cosine multiplier of update number s (0-based): s/W during warmup (the first update
    has lr 0), then ½(1 + cos(π·(s − W)/(total − W))), 0 from `total` on."""
    def multiplier(s: int) -> float:
        if s < warmup:
            return s / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (s - warmup) / max(1, total - warmup)))))
    return multiplier


def adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with decay on kernels and the token embedding only (jaxnorm's mask: no norms, biases, positions or
    gates), fused into one kernel per step where this torch supports it on `device`: (optimizer, what it is)."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim >= 2)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True), "AdamW(fused=True)"
    except (RuntimeError, TypeError, ValueError) as e:  # an older torch, or no fused kernel on this device
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return (torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8),
                f"AdamW (default implementation; fused=True unsupported here: {reason})")


class Reference:
    """One seed of one cell: model, AdamW, schedule, batch streams and the train step, as jaxnorm trains it."""

    def __init__(self, kind: str, depth: int, args: argparse.Namespace, *, seed: int = 0, variant: str = "eager"):
        torch.manual_seed(seed)
        self.args, self.device = args, torch.device(args.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.eval_gen = torch.Generator(device=self.device).manual_seed(seed + 1_000_003)  # a held-out stream
        self.vocab = args.num_symbols + 1
        self.model = Model(kind, depth, args.d_model, args.heads, args.d_ff, self.vocab, args.seq_len).to(self.device)
        self.opt, self.optimizer = adamw(self.model, args.lr, args.weight_decay, self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_multiplier(args.warmup, args.total_steps))
        # dynamic=False: every step has the same shapes, so one compiled graph serves them all.
        self.forward = torch.compile(self.model, dynamic=False) if variant == "compile" else self.model
        self.layer_params = [list(b.parameters()) for b in self.model.blocks]
        self.recorded: list[torch.Tensor] = []
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self.threads = torch.get_num_threads()

    def loss(self, gen: torch.Generator) -> torch.Tensor:
        inputs, targets, weights = reverse_batch(gen, self.args.batch, self.args.seq_len, self.args.num_symbols)
        logits = self.forward(inputs)
        ce = nn.functional.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1), reduction="none")
        return (ce * weights.reshape(-1)).sum() / weights.sum().clamp(min=1.0)

    def step(self) -> torch.Tensor:
        loss = self.loss(self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # per-layer gradient norms, recorded every step
            self.recorded.append(torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                [p.grad for p in ps]))) for ps in self.layer_params]))
        self.opt.step()
        self.sched.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, batches: int) -> float:
        return float(torch.stack([self.loss(self.eval_gen) for _ in range(batches)]).mean())

    def choose_threads(self, setting: str | int | None, steps: int = 5, tries: int = 3) -> int:
        """Set this model's intra-op threads: an int, None (torch's current), or "auto": on a CPU, 1 or torch's
        default, timed in turn over `tries` runs of `steps` steps; the default only when its median is at
        least 10% faster, since a choice made in a quiet moment must hold under load, and there several
        threads on a busy CPU lose far more than they gain. Returns the count."""
        if setting != "auto":
            self.threads = int(setting) if setting else torch.get_num_threads()
            return self.threads
        if self.device.type == "cpu" and DEFAULT_THREADS > 1:
            tried: dict[int, list[float]] = {1: [], DEFAULT_THREADS: []}
            for n in tried:
                self.threads = n
                self.timed_steps(1)  # the first step at a new thread count resizes torch's pool
            for _ in range(tries):
                for n in tried:
                    self.threads = n
                    tried[n].append(self.timed_steps(steps))
            many_faster = statistics.median(tried[DEFAULT_THREADS]) < 0.9 * statistics.median(tried[1])
            self.threads = DEFAULT_THREADS if many_faster else 1
        return self.threads

    def timed_steps(self, steps: int) -> float:
        """Seconds of `steps` steps (CUDA kernels run asynchronously: the queue is drained before each read)."""
        torch.set_num_threads(self.threads)  # models timed in turn may have chosen different counts
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        seconds = time.perf_counter() - t0
        self.recorded.clear()
        return seconds


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model, task and optimizer flags every torch script shares; defaults are the `quick` preset's."""
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-symbols", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=50, help="lr warmup steps")
    p.add_argument("--total-steps", type=int, default=600, help="lr schedule horizon (the cell's steps)")
    p.add_argument("--threads", default="auto", help="torch's intra-op threads: an integer >= 1, or auto (per "
                   "model on a CPU: torch's default where at least 10%% faster than 1 in warm-up, else 1; the default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")


def apply_device_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.threads != "auto":
        if not args.threads.isdigit() or int(args.threads) < 1:
            p.error(f"--threads: invalid value {args.threads!r}; allowed: auto or an integer >= 1")
        args.threads = int(args.threads)
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda is not available to this torch; allowed here: cpu")


def describe(args: argparse.Namespace) -> dict:
    return {"torch": torch.__version__, "threads": args.threads, "default_threads": DEFAULT_THREADS,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}


def split(flag: str, text: str, allowed: tuple[str, ...], p: argparse.ArgumentParser) -> list[str]:
    names = [x for x in text.split(",") if x]
    if not names or any(x not in allowed for x in names):
        p.error(f"{flag}: invalid value {text!r}; allowed: comma-separated {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--blocks", default="pre_ln,post_ln", help=f"comma-separated, from {', '.join(BLOCKS)}")
    p.add_argument("--depths", type=ints, default=[4, 16, 64])
    p.add_argument("--variant", default="eager", choices=VARIANTS, help="eager, or the model under torch.compile")
    add_model_flags(p)
    p.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    p.add_argument("--tiny", action="store_true", help="smoke run: depth 2, tiny width, few steps")
    args = p.parse_args(argv)
    blocks = split("--blocks", args.blocks, BLOCKS, p)
    if args.tiny:
        args.depths, args.d_model, args.d_ff, args.batch, args.seq_len = [2], 16, 32, 4, 8
        args.steps, args.repeats, args.warmup_steps = 3, 2, 1
    apply_device_flags(p, args)
    results, optimizer = [], ""
    for kind in blocks:
        for depth in args.depths:
            ref = Reference(kind, depth, args, variant=args.variant)
            optimizer = ref.optimizer
            for _ in range(args.warmup_steps):
                ref.step()
            ref.choose_threads(args.threads)
            ref.recorded.clear()
            step_s = statistics.median(ref.timed_steps(args.steps) / args.steps for _ in range(args.repeats))
            results.append({"block": kind, "depth": depth, "step_s": step_s, "threads": ref.threads})
    print(json.dumps({**describe(args), "optimizer": optimizer, "variant": args.variant, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
