"""Helpers shared by the benchmarks: timing, percentiles, memory and target checks.

Every figure is reported beside a baseline measured in the same run (this machine is shared
and noisy), so the ratio is what to read; absolute times are context.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

NS = 1e-9


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0..100) of ``samples``, nearest rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in microseconds."""
    return {"p50_us": round(percentile(samples_s, 50) * 1e6, 2),
            "p99_us": round(percentile(samples_s, 99) * 1e6, 2),
            "n": len(samples_s)}


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Seconds per call of ``fn``, one sample per call."""
    out: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) * NS)
    return out


def interleaved(fns: dict[str, Callable[[], Any]], n: int, block: int = 50
                ) -> dict[str, list[float]]:
    """Time each function ``n`` times, alternating in blocks, so noise hits all alike."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    done = 0
    while done < n:
        step = min(block, n - done)
        for name, fn in fns.items():
            out[name].extend(time_calls(fn, step))
        done += step
    return out


async def atime_calls(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await fn()
        out.append((clock() - t0) * NS)
    return out


async def ainterleaved(fns: dict[str, Callable[[], Awaitable[Any]]], n: int, block: int = 100
                       ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    done = 0
    while done < n:
        step = min(block, n - done)
        for name, fn in fns.items():
            out[name].extend(await atime_calls(fn, step))
        done += step
    return out


async def concurrently(call: Callable[[], Awaitable[Any]], n: int, concurrency: int
                       ) -> tuple[float, float]:
    """``n`` calls by ``concurrency`` workers taking from one queue: (calls per second of wall
    time, CPU seconds of this process per call)."""
    import asyncio

    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await call()

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def target(name: str, value: float, limit: float, unit: str, *, quick: bool = False,
           at_least: bool = False) -> dict[str, Any]:
    """A target row: met when ``value`` is at most ``limit`` (at least, with ``at_least``);
    not judged in quick mode."""
    met: bool | None = None if quick else (value >= limit if at_least else value <= limit)
    row = {"target": name, "value": round(value, 2), "limit": limit, "unit": unit, "met": met}
    if at_least:
        row["at_least"] = True
    return row


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
