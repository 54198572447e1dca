"""Real processes sharing one database file: no overspend, no leaks, recovery after SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import random
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
KILL_ROUNDS = 4


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


def test_sigkill_while_settling_leaves_no_spend_without_its_ledger_row(tmp_path: Path) -> None:
    """Processes spending through ModelManager, SIGKILLed at random moments (most of their time
    is spent inside budget transactions): a settlement and its ledger row are one transaction,
    so after recovery committed spend equals the sum of the ledger's costs, to the nano-dollar,
    and no row is written twice."""
    path = str(tmp_path / "budget.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(2026)
    for rnd in range(KILL_ROUNDS):
        readies = [ctx.Event() for _ in range(2)]
        children = [ctx.Process(target=workers.spend_until_killed, args=(path, 10 * rnd + i, 3, ready))
                    for i, ready in enumerate(readies)]
        for child in children:
            child.start()
        try:
            for ready in readies:
                assert ready.wait(60), "a child never finished a request"
            for child in children:
                time.sleep(rng.uniform(0.0, 0.4))
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        finally:
            for child in children:
                if child.is_alive():
                    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
                child.join(10)
        assert [c.exitcode for c in children] == [-signal.SIGKILL] * 2

    c = Charge("global", "total", "total", Decimal("1000"))

    async def recover() -> None:
        later = time.time() + workers.KILLED_TTL + 1
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path), clock=lambda: later)
        await backend.reconcile()  # what ModelManager.start() does
        (u,) = await backend.usage([c])
        rows = await backend.rows()
        audit = await backend.audit()
        await backend.aclose()
        assert u.reserved == 0 and audit["open"] == 0 and audit["mismatched"] == []
        assert u.committed > 0 and rows
        assert to_nanos(u.committed) == sum(to_nanos(r.cost) for r in rows if r.cost is not None)
        keys = [(r.request_id, r.attempt) for r in rows]
        assert len(keys) == len(set(keys))

    anyio.run(recover)
