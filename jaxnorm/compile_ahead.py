"""Compile the next model structure's programs while the current one trains.

A sweep runs its packs of cells in order, the packs of one model structure adjacent (jaxnorm.packing), and
the first pack of each structure compiles its programs (init, train chunk, eval, Jacobian probes) before
it can train. `CompileAhead` compiles them on one background thread instead, while the packs before it
train: JAX keeps the executables, so when the structure's turn comes its programs are ready
(`jaxnorm.trainer.compile_pack_ahead`, tested to leave nothing for the run to compile). One structure ahead
is enough to overlap every compile but the first with training; jaxnorm.programs keeps three structures'
programs alive (the previous one, the current one and the one compiled ahead), so none is dropped before
its first use.

A failure while compiling ahead is not reported here: the pack then compiles in turn, and raises there if
the failure is real.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Hashable, Sequence, TypeVar

THREAD_NAME = "jaxnorm-compile-ahead"  # jaxnorm.programs.CompileLog counts this thread's compiles apart

Pack = TypeVar("Pack")


class CompileAhead:
    """Call `before(i)` before running `packs[i]`: it waits for that pack's structure if it is being compiled
    ahead, and at a structure's first pack starts compiling the structure after it (one ahead, never more).
    `key(pack)` names a pack's programs (equal keys: the same programs); `compile_pack(pack)` compiles them
    without running anything. Use as a context manager (the thread is stopped on exit)."""

    def __init__(self, packs: Sequence[Pack], key: Callable[[Pack], Hashable], compile_pack: Callable[[Pack], None],
                 *, enabled: bool = True):
        self._packs, self._compile = list(packs), compile_pack
        self._keys = [key(p) for p in self._packs]
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=THREAD_NAME)
                      if enabled and len(set(self._keys)) > 1 else None)
        self._started: dict[Hashable, concurrent.futures.Future | None] = {}  # None: compiled by the caller

    def before(self, i: int) -> None:
        if self._pool is None:
            return
        key = self._keys[i]
        future = self._started.setdefault(key, None)
        if i == 0 or self._keys[i - 1] != key:  # a structure's first pack: start on the structure after it
            upcoming = next((k for k in self._keys[i + 1:] if k != key), None)
            if upcoming is not None and upcoming not in self._started:
                self._started[upcoming] = self._pool.submit(self._compile, self._packs[self._keys.index(upcoming)])
        if future is not None:  # the caller times the wait (jaxnorm.time_split)
            concurrent.futures.wait([future])

    def close(self) -> None:
        """Stop: a compile under way finishes (XLA cannot be interrupted), queued ones are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> CompileAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
