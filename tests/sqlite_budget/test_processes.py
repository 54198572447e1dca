"""Real processes sharing one database file: no overspend, no leaks, recovery after SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions, to_nanos

from . import workers

PROCESSES = 4
PER_PROCESS = 120


def test_processes_never_overspend_and_leak_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0  # after every child has imported and opened the file
    with ProcessPoolExecutor(PROCESSES, mp_context=ctx) as pool:
        futures = [pool.submit(workers.hammer, path, seed, PER_PROCESS, 6, start_at)
                   for seed in range(PROCESSES)]
        results = [f.result(timeout=60) for f in futures]

    assert [v for r in results for v in r["violations"]] == []
    assert max(r["peak_nanos"] for r in results) <= to_nanos(workers.LIMIT)
    granted = sum(r["granted"] for r in results)
    refused = sum(r["refused"] for r in results)
    assert granted + refused == PROCESSES * PER_PROCESS
    assert granted >= 100 and refused > 0  # the budget was really contended and ran out

    async def check() -> None:
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path))
        states = await backend.usage(workers.CHARGES)
        spent = sum(r["settled_nanos"] for r in results)
        for u in states:
            assert to_nanos(u.committed) == spent  # every settle counted, once, on every charge
            assert u.reserved == 0
            assert u.committed <= u.limit
        audit = await backend.audit()
        assert audit == {"open": 0, "expired": 0, "mismatched": []}
        await backend.aclose()

    anyio.run(check)


def test_sigkilled_process_leases_expire_and_spend_survives(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=workers.hold, args=(path, 5, 3, ready))
    child.start()
    try:
        assert ready.wait(30), "the child never got its reservations"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
    assert child.exitcode == -signal.SIGKILL

    c = Charge("global", "total", "total", Decimal("1.00"))

    async def recover() -> None:
        now = time.time()
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path), clock=lambda: now)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal("0.5"))
        with pytest.raises(BudgetExceeded):  # the dead process's leases still hold headroom
            await backend.reserve([c], Decimal("0.5"), ttl=30)
        # 31 s later (frozen clock): the leases have expired.
        backend.clock = lambda: now + 31
        assert await backend.reconcile() == 5
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal(0))
        r = await backend.reserve([c], Decimal("0.7"), ttl=30)
        await backend.settle(r, Decimal("0.7"))
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("1.0"), Decimal(0))
        assert (await backend.audit())["mismatched"] == []
        await backend.aclose()

    anyio.run(recover)


def test_dead_process_lease_is_reclaimed_lazily_by_reserve(tmp_path: Path) -> None:
    """No reconcile call: a reserve that needs the headroom expires the stale leases itself."""
    path = str(tmp_path / "budget.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=workers.hold, args=(path, 10, 0, ready))
    child.start()
    try:
        assert ready.wait(30)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
    c = Charge("global", "total", "total", Decimal("1.00"))

    async def reclaim() -> None:
        later = time.time() + 31
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path), clock=lambda: later)
        r = await backend.reserve([c], Decimal("1.00"), ttl=30)
        await backend.release(r)
        assert (await backend.audit())["open"] == 0
        await backend.aclose()

    anyio.run(reclaim)
