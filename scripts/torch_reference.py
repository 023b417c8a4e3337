"""PyTorch eager reference of jaxnorm's train step, for a speed comparison; prints JSON timings.

    python scripts/torch_reference.py --blocks pre_ln,post_ln --depths 4,16,64   # needs torch (extra [bench])
    python scripts/torch_reference.py --tiny

The same encoder as jaxnorm's `pre_ln` / `post_ln` blocks on the `reverse` task: token embedding (N(0, 1)) +
learned positions (N(0, 0.02)); per block multi-head attention with biased Q, K, V, O projections and 1/√d_k
logits, a ReLU MLP (D → F → D), LayerNorm (eps 1e-5) placed as x ← x + F(LN(x)) (pre_ln, plus a final LN) or
x ← LN(x + F(x)) (post_ln); xavier-uniform kernels, zero biases; weighted cross-entropy on the answer half;
AdamW (weight decay off norms and biases) with linear warmup + cosine decay. After every backward the
per-layer gradient norms ‖∂loss/∂θ_l‖ are computed (as jaxnorm's step does every step for its non-finite
bookkeeping). The step is eager PyTorch on CPU threads (torch.get_num_threads()) or, with `--device cuda`, on
the GPU (batches drawn on the device, torch.cuda.synchronize() before each clock read), timed with
time.perf_counter after warm-up steps, median over repeats of `--steps` steps.

Output: one JSON object on stdout, {"torch": version, "threads": n, "device": name, "results": [{"block", "depth",
"step_s"}...]}. This script needs only torch (no JAX), so it can run in another interpreter than jaxnorm's.
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
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "pre_ln":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
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


def time_config(kind: str, depth: int, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = args.num_symbols + 1
    model = Model(kind, depth, args.d_model, args.heads, args.d_ff, vocab, args.seq_len).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    total, warm = args.total_steps, args.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm)))))
    layer_params = [list(b.parameters()) for b in model.blocks]
    recorded: list[torch.Tensor] = []

    def step() -> None:
        inputs, targets, weights = reverse_batch(gen, args.batch, args.seq_len, args.num_symbols)
        logits = model(inputs)
        ce = nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none")
        loss = (ce * weights.reshape(-1)).sum() / weights.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # per-layer gradient norms, recorded every step
            recorded.append(torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                [p.grad for p in ps]))) for ps in layer_params]))
        opt.step()
        sched.step()

    # CUDA kernels run asynchronously: wait for the queued ones before each clock read.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup_steps):
        step()
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / args.steps)
        recorded.clear()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--blocks", default="pre_ln,post_ln")
    p.add_argument("--depths", type=ints, default=[4, 16, 64])
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-symbols", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20, help="lr warmup steps")
    p.add_argument("--total-steps", type=int, default=180, help="lr schedule horizon")
    p.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    p.add_argument("--tiny", action="store_true", help="smoke run: depth 2, tiny width, few steps")
    args = p.parse_args(argv)
    if args.tiny:
        args.depths, args.d_model, args.d_ff, args.batch, args.seq_len = [2], 16, 32, 4, 8
        args.steps, args.repeats, args.warmup_steps = 3, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda is not available to this torch; allowed here: cpu")
    results = [{"block": kind, "depth": depth, "step_s": time_config(kind, depth, args)}
               for kind in args.blocks.split(",") for depth in args.depths]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
