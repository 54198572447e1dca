"""Wall-clock bounds that hold on a busy machine: time the event loop's thread spent off the
CPU (another process had it) is measured and forgiven, and nothing else is.

A test that asserts ``time.monotonic() - t0 < bound`` on a shared 2-core machine at load 12
measures the scheduler: 0.07 s of the loop's own CPU work took 2.5 s of wall time there. The
library cannot promise anything about time it is not given. What it does promise, a timeout
or a deadline, is checked by :meth:`Stalls.elapsed`: the wall time since ``t0`` minus the
part of it the loop's thread was kept off the CPU. Time the loop spent working (imports,
parsing, a pool rescanning its waiters) still counts, as it should.

The heartbeat sleeps :data:`PERIOD` and compares each late beat's gap with the thread's own
CPU time over it (``time.thread_time()``): a gap the thread did not spend computing was spent
waiting for a CPU. The same method as ``tests/reliability/test_load.py``. Where each
measured span is read from the loop's thread itself, :func:`runqueue_wait` gives the kernel's
exact count instead (``tests/openai/test_load.py``).

    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.complete(card, request)
        assert stalls.elapsed(t0) < 2.0
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

#: The heartbeat's sleep.
PERIOD = 0.01
#: A beat later than this past its sleep counts as a stall (timer slack below it is not one).
LATE = 0.01


class Stalls:
    """Spans of time the event loop's thread was off the CPU: ``(end, length)`` pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        #: The last beat: when, and the thread's CPU time then (the gap since may be a stall
        #: the heartbeat has not had the chance to record: the test's task ran first).
        self.beat = (time.monotonic(), time.thread_time())

    def _open_gap(self) -> tuple[float, float] | None:
        last, cpu = self.beat
        now = time.monotonic()
        off = now - last - PERIOD - (time.thread_time() - cpu)
        return (now, off) if now - last > PERIOD + LATE and off > 0 else None

    def off_cpu(self, start: float, end: float) -> float:
        """How much of ``[start, end]`` (``time.monotonic()`` readings) the thread was off the CPU."""
        return sum(max(0.0, min(at, end) - max(at - d, start)) for at, d in self.spans)

    def elapsed(self, t0: float, t1: float | None = None) -> float:
        """Wall time from ``t0`` to ``t1`` (now) less the time the thread was off the CPU."""
        if t1 is None:
            gap = self._open_gap()
            end = time.monotonic()
            extra = 0.0 if gap is None else max(0.0, min(gap[0], end) - max(gap[0] - gap[1], t0))
            return end - t0 - self.off_cpu(t0, end) - extra
        return t1 - t0 - self.off_cpu(t0, t1)

    @property
    def total(self) -> float:
        return sum(d for _, d in self.spans)

    def __repr__(self) -> str:
        longest = max((d for _, d in self.spans), default=0.0)
        return f"Stalls({len(self.spans)} spans, {self.total:.3f} s off the CPU, longest {longest:.3f} s)"


def runqueue_wait(pid: int | None = None) -> float:
    """Seconds the calling thread (with ``pid``: that process's main thread) has spent
    runnable but waiting for a CPU, as the kernel counts them (``/proc/.../schedstat``, Linux):
    exactly the time other threads and processes kept it off the CPU, where a heartbeat can
    only estimate it. Time the thread was blocked (on a lock, the interpreter lock included,
    or a call that does not return) is not in it. 0.0 where the kernel does not say (or the
    process is gone), so nothing is forgiven there."""
    path = "/proc/thread-self/schedstat" if pid is None else f"/proc/{pid}/schedstat"
    with contextlib.suppress(OSError, ValueError, IndexError), open(path, "rb") as f:
        return int(f.read().split()[1]) / 1e9
    return 0.0


@asynccontextmanager
async def loop_stalls() -> AsyncIterator[Stalls]:
    """A :class:`Stalls` filled by a heartbeat in the current event loop while the block runs."""
    stalls = Stalls()

    async def heartbeat(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        last, cpu = stalls.beat = time.monotonic(), time.thread_time()
        task_status.started()
        while True:
            await anyio.sleep(PERIOD)
            now, cpu_now = time.monotonic(), time.thread_time()
            gap = now - last
            if gap > PERIOD + LATE:
                # Only the part the thread did not spend computing is forgiven.
                off = gap - PERIOD - (cpu_now - cpu)
                if off > 0:
                    stalls.spans.append((now, off))
            last, cpu = stalls.beat = now, cpu_now

    async with anyio.create_task_group() as tg:
        await tg.start(heartbeat)
        try:
            yield stalls
        finally:
            tg.cancel_scope.cancel()
