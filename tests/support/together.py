"""Spawned children that start their work together, once every one is ready: the contention
the process tests are after, without a fixed wait for it.

The tests gave their children a start time a few seconds ahead (``time.time() + 4.0``),
guessed to be after every child had imported and opened its store: on an idle machine they
were ready in about a second and waited the rest, on a loaded one some were still importing
and started late, alone. Now each child says it is ready and waits for the parent's go,
which comes once all have said so::

    together = Together(ctx, n)
    with ProcessPoolExecutor(n, mp_context=ctx, **together.pool_options()) as pool:
        futures = [pool.submit(work, ...) for _ in range(n)]  # work awaits start_together()
        together.go(futures)

A child made with ``ctx.Process`` instead gets ``together.handles()`` among its arguments
and calls :func:`join` with them first. The primitives pass to a child only when it is made
(multiprocessing refuses them through a pool's queue): hence the pool's initializer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import anyio

#: In a child: (ready, go) set by :func:`join` (a pool's initializer).
_handles: tuple[Any, Any] | None = None


def join(ready: Any, go: Any) -> None:
    """Make this child one of those that start together (a pool's initializer)."""
    global _handles
    _handles = (ready, go)


async def start_together(timeout: float = 300) -> None:
    """In a child: say this child is ready, and wait for the parent's go (at once where this
    process starts nothing together: a child spawned later, say)."""
    if _handles is None:
        return
    ready, go = _handles
    ready.release()
    if not await anyio.to_thread.run_sync(go.wait, timeout):
        raise TimeoutError(f"no go from the parent in {timeout} s")


class Together:
    """The parent's side: ``n`` children, the go given once all are ready."""

    def __init__(self, ctx: Any, n: int) -> None:
        self.n = n
        self.ready = ctx.Semaphore(0)
        self.event = ctx.Event()

    def handles(self) -> tuple[Any, Any]:
        return self.ready, self.event

    def pool_options(self) -> dict[str, Any]:
        """``ProcessPoolExecutor`` keyword arguments making each of its children join."""
        return {"initializer": join, "initargs": self.handles()}

    def go(self, futures: Iterable[Future[Any]] = (), processes: Iterable[Any] = (), *,
           timeout: float = 120) -> None:
        """Wait until all ``n`` children are ready, then let them start. A child that failed
        first (a future done, a process dead) raises its error here at once, not after the
        timeout."""
        futures, processes = list(futures), list(processes)
        end = time.monotonic() + timeout
        for _ in range(self.n):
            while not self.ready.acquire(timeout=0.05):
                for f in futures:
                    if f.done():
                        f.result()  # raises what the child raised
                        raise AssertionError("a child ended before it started together")
                for p in processes:
                    assert p.exitcode is None, f"a child exited with {p.exitcode} before it started"
                assert time.monotonic() < end, f"the children were not all ready in {timeout} s"
        self.event.set()
