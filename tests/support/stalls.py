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

A call that waits on another process (a PostgreSQL backend stopping a statement at its
timeout) also waits while that process is kept off the CPU: ``loop_stalls(also=...)`` reads
the kernel's count for those processes at every beat, and forgives, beat by beat, the larger
of the two (never their sum: the time is forgiven once when both wait together).

    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.complete(card, request)
        assert stalls.elapsed(t0) < 2.0
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

#: The heartbeat's sleep.
PERIOD = 0.01
#: A beat later than this past its sleep counts as a stall (timer slack below it is not one).
LATE = 0.01


class Stalls:
    """Spans of time the event loop's thread was off the CPU: ``(end, length)`` pairs."""

    def __init__(self, cpu: Callable[[], float] = time.thread_time) -> None:
        self.spans: list[tuple[float, float]] = []
        #: The CPU clock whose time is not forgiven: the loop's thread's, or the process's
        #: (``time.process_time``) where the loop also waits for this process's other threads
        #: (the interpreter lock) and their work must count too.
        self.cpu = cpu
        #: The last beat: when, and the CPU time then (the gap since may be a stall the
        #: heartbeat has not had the chance to record: the test's task ran first).
        self.beat = (time.monotonic(), cpu())

    def _open_gap(self) -> tuple[float, float] | None:
        last, cpu = self.beat
        now = time.monotonic()
        off = now - last - PERIOD - (self.cpu() - cpu)
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


def own_threads() -> list[int]:
    """This process's threads (their ids, which :func:`runqueue_wait` takes): for
    ``loop_stalls(also=own_threads)`` where the measured calls wait on other threads of the
    process (a test server's, a store's), or on the interpreter lock one of them holds while
    it waits for a CPU. [] where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError):
        return [int(t) for t in os.listdir("/proc/self/task")]
    return []


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
async def loop_stalls(also: Callable[[], Iterable[int]] | None = None,
                      cpu: Callable[[], float] = time.thread_time,
                      whole_after: float | None = None) -> AsyncIterator[Stalls]:
    """A :class:`Stalls` filled by a heartbeat in the current event loop while the block runs.
    ``cpu``: the clock of the CPU time not forgiven (see :attr:`Stalls.cpu`). ``also``: the
    pids of other processes the measured calls wait on (read again at every beat, so a
    process started meanwhile counts from its first beat); in each beat, the most any of them
    waited for a CPU counts as a stall when it is more than the loop's own. ``whole_after``: a
    beat later than this is forgiven whole, its CPU time too (where the kernel's counts miss
    stalls and one pass of the loop's own tasks cannot take that long)."""
    stalls = Stalls(cpu)
    waited: dict[int, float] = {}

    def others() -> float:
        """The most any process of ``also`` waited for a CPU since the last beat."""
        if also is None:
            return 0.0
        most, seen = 0.0, {}
        for pid in also():
            seen[pid] = runqueue_wait(pid)
            if pid in waited:
                most = max(most, seen[pid] - waited[pid])
        waited.clear()
        waited.update(seen)
        return most

    async def heartbeat(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        others()
        last, used = stalls.beat = time.monotonic(), cpu()
        task_status.started()
        while True:
            await anyio.sleep(PERIOD)
            now, used_now = time.monotonic(), cpu()
            gap = now - last
            off = 0.0
            if gap > PERIOD + LATE:
                # Only the part the thread (the process) did not spend computing is forgiven.
                off = gap - PERIOD - (used_now - used)
                if whole_after is not None and gap - PERIOD > whole_after:
                    off = gap - PERIOD
            off = min(gap, max(off, others()))
            if off > 0:
                stalls.spans.append((now, off))
            last, used = stalls.beat = now, used_now

    async with anyio.create_task_group() as tg:
        await tg.start(heartbeat)
        try:
            yield stalls
        finally:
            tg.cancel_scope.cancel()
