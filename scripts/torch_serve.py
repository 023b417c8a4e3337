"""The PyTorch reference as a timing worker: scripts/bench.py times it in turn with jaxnorm's programs.

    python scripts/torch_serve.py [torch_reference.py's model flags]     # started by jaxnorm.benchmarking

A separate process (so it may be another interpreter, and torch's thread pools never share a process with
XLA's), driven one JSON line at a time on stdin, answering one JSON line on stdout:

    {"op": "prepare", "id": ..., "block": ..., "depth": ..., "variant": "eager"|"compile", "warmup_steps": n}
        -> {"ok": true, "optimizer": ..., "threads": ..., "prepare_s": ...} or {"ok": false, "reason": ...}
    {"op": "time", "id": ..., "steps": n}   -> {"seconds": wall seconds of n steps, by this process's clock}
    {"op": "drop", "id": ...}               -> {"ok": true}

The first line it prints describes torch ({"torch", "threads", "device"}); it exits at the end of stdin.
`prepare` builds the model and runs its warm-up steps, so torch.compile compiles there, not in a timed call,
then chooses its threads (`--threads`); a variant that fails (torch.compile without a working compiler, say)
answers with the reason. Its `prepare_s` is the build and warm-up, compiling included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from torch_reference import Parser, Reference, add_model_flags, apply_device_flags, describe


def answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def prepare(request: dict, args: argparse.Namespace) -> tuple[Reference | None, dict]:
    t0 = time.perf_counter()
    try:
        ref = Reference(request["block"], request["depth"], args, variant=request["variant"])
        for _ in range(request["warmup_steps"]):
            ref.step()
        ref.sync()
        prepare_s = time.perf_counter() - t0
        ref.choose_threads(args.threads)
    except Exception as e:  # a variant this torch cannot run is a result to report, not a crash
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return None, {"ok": False, "reason": f"{type(e).__name__}: {reason}"}
    ref.recorded.clear()
    return ref, {"ok": True, "optimizer": ref.optimizer, "threads": ref.threads, "prepare_s": prepare_s}


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    add_model_flags(p)
    args = p.parse_args(argv)
    apply_device_flags(p, args)
    answer(describe(args))
    refs: dict[str, Reference] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "prepare":
            ref, reply = prepare(request, args)
            if ref is not None:
                refs[request["id"]] = ref
            answer(reply)
        elif op == "time":
            answer({"seconds": refs[request["id"]].timed_steps(request["steps"])})
        elif op == "drop":
            refs.pop(request["id"], None)
            answer({"ok": True})
        else:
            answer({"ok": False, "reason": f"op: invalid value {op!r}; allowed: prepare, time, drop"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
