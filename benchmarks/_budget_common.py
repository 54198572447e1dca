"""What the budget benchmarks (bench_budget, bench_pg_budget, bench_redis) share: the charges,
the reserve + settle loop, the four-process run, the latency table, the throwaway server the
shared-store ones start, and the command line. Imports core alone.

A benchmark passes ``make(kind, where)``, its factory of an unopened backend of ``kind`` on
``where`` (a file, a schema); each of the four processes is its own script run with
``--worker``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
from _common import percentile
from squirrel_models.budget import Charge, LedgerRow

Make = Callable[[str, str], Any]

CHARGES = (Charge("global", "day", "2026-11-26", Decimal("1000000")),
           Charge("key:team", "month", "2026-11", Decimal("1000000")))
AMOUNT, SPENT = Decimal("0.0012"), Decimal("0.0007")
PROCESSES = 4
#: The ledger row of one request, written with its settlement in the latency figures.
ROW = LedgerRow("r", 1, "p", "p/m", "ok", 300, 100, 0, 0, SPENT, None, 0.4, ("global",),
                datetime(2026, 11, 26, tzinfo=UTC))


def durations(quick: bool) -> tuple[float, int]:
    """Seconds per throughput figure and requests per latency figure (``--quick``: a smoke run)."""
    return (0.4, 200) if quick else (3.0, 3000)


@contextlib.contextmanager
def served(server: Any, url_env: str) -> Iterator[Any]:
    """``server`` (a test-support server: ``start()``, ``url``, ``remove()``) started, its URL
    in ``url_env`` (the workers read it there, never from argv); stopped and its folder
    removed after."""
    server.start()
    os.environ[url_env] = server.url
    try:
        yield server
    finally:
        server.remove()
        os.environ.pop(url_env, None)


def pair_rates(script: str, make: Make, where: Callable[[str], str], seconds: float,
               one: list[tuple[str, int]], four: tuple[str, ...], widths: tuple[int, int],
               shared: Callable[[str], str]) -> dict[str, float]:
    """Pairs per second of each ``(kind, tasks)`` of ``one`` in this process, then of each kind
    of ``four`` in :data:`PROCESSES` runs of ``script --worker``, printed as they come (kinds
    padded to ``widths``; a 4-process line notes what ``shared(kind)`` says they share); keyed
    ``1proc/KIND/Ntasks`` and ``4proc/KIND``."""
    rates: dict[str, float] = {}
    for kind, tasks in one:
        rate = anyio.run(pairs, make, kind, where(kind), seconds, tasks) / seconds
        rates[f"1proc/{kind}/{tasks}tasks"] = rate
        print(f"  1 process,  {tasks} task(s), {kind:<{widths[0]}} {rate:>10,.0f} /s")
    for kind in four:
        # start 2 s from now: after every worker has imported and connected
        rate = four_processes(script, kind, where(kind), seconds, lead_s=2.0)
        rates[f"4proc/{kind}"] = rate
        print(f"  {PROCESSES} processes, 1 task each, {kind:<{widths[1]}} {rate:>10,.0f} /s ({shared(kind)})")
    return rates


async def opened(backend: Any) -> Any:
    """``backend``, opened if it has anything to open (the in-memory one has not)."""
    if hasattr(backend, "open"):
        await backend.open()
    return backend


async def pairs(make: Make, kind: str, where: str, seconds: float, tasks: int, start_at: float = 0.0) -> int:
    """Reserve + settle pairs done in ``seconds`` by ``tasks`` concurrent tasks."""
    backend = await opened(make(kind, where))
    await anyio.sleep(max(0.0, start_at - time.time()))
    done = 0
    end = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            r = await backend.reserve(CHARGES, AMOUNT, ttl=600)
            await backend.settle(r, SPENT)
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(loop)
    await backend.aclose()
    return done


def four_processes(script: str, kind: str, where: str, seconds: float, *, lead_s: float) -> float:
    """Pairs per second of :data:`PROCESSES` runs of ``script --worker``, one task each, that
    start together ``lead_s`` from now (once every worker has imported and opened its backend)."""
    start_at = time.time() + lead_s
    procs = [subprocess.Popen([sys.executable, script, "--worker", kind, where, str(seconds),
                               str(start_at)], stdout=subprocess.PIPE, text=True)
             for _ in range(PROCESSES)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"worker failed ({p.returncode})")
        total += int(out.strip())
    return total / seconds


def latency_rows(lat: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per backend of ``lat`` (kind -> seconds per request, ``memory`` among them): p50 and p99
    in microseconds, and what each adds over the in-memory backend."""
    base50, base99 = percentile(lat["memory"], 50), percentile(lat["memory"], 99)
    rows = []
    for kind, samples in lat.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        rows.append({"backend": kind, "p50_us": round(p50 * 1e6, 1), "p99_us": round(p99 * 1e6, 1),
                     "added_p50_us": round((p50 - base50) * 1e6, 1),
                     "added_p99_us": round((p99 - base99) * 1e6, 1)})
    return rows


def print_latency(rows: list[dict[str, Any]], width: int) -> None:
    """One line per row of :func:`latency_rows`, backends padded to ``width``."""
    for r in rows:
        print(f"  {r['backend']:<{width}} p50 {r['p50_us']:>8,.1f} us  p99 {r['p99_us']:>8,.1f} us  "
              f"added over in-memory: p50 {r['added_p50_us']:>8,.1f} us  p99 {r['added_p99_us']:>8,.1f} us")


def cli(doc: str | None, main: Callable[[bool], dict[str, Any]], make: Make) -> None:
    """A budget benchmark's command line: ``--quick``, ``--json`` (print the figures), and
    ``--worker KIND WHERE SECONDS START_AT`` (one of :func:`four_processes`'s runs)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "WHERE", "SECONDS", "START_AT"))
    args = parser.parse_args()
    if args.worker:
        kind, where, secs, start = args.worker
        print(anyio.run(pairs, make, kind, where, float(secs), 1, float(start)))
    else:
        result = main(args.quick)
        if args.json:
            print(json.dumps(result))
