"""Real processes, each with its own pool, sharing one budget: no overspend, no leaks, and
recovery after a SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded
from squirrel_models.sqlbudget import to_nanos

from . import workers
from .pgserver import PgServer

PROCESSES = 4
PER_PROCESS = 150


def test_processes_never_overspend_and_leak_nothing(pg_server: PgServer, schema: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0  # after every child has imported and opened its pool
    with ProcessPoolExecutor(PROCESSES, mp_context=ctx) as pool:
        futures = [pool.submit(workers.hammer, pg_server.url, schema, seed, PER_PROCESS, 6, start_at)
                   for seed in range(PROCESSES)]
        results = [f.result(timeout=90) for f in futures]

    assert [v for r in results for v in r["violations"]] == []
    assert max(r["peak_nanos"] for r in results) <= to_nanos(workers.LIMIT)
    granted = sum(r["granted"] for r in results)
    refused = sum(r["refused"] for r in results)
    assert granted + refused == PROCESSES * PER_PROCESS
    assert granted >= 100 and refused > 0  # the budget was really contended and ran out

    async def check() -> None:
        b = workers.backend(pg_server.url, schema)
        spent = sum(r["settled_nanos"] for r in results)
        for u in await b.usage(workers.CHARGES):
            assert to_nanos(u.committed) == spent  # every settle counted, once, on every charge
            assert u.reserved == 0
            assert u.committed <= u.limit
        assert await b.audit() == {"open": 0, "expired": 0, "mismatched": []}
        await b.aclose()

    anyio.run(check)


def test_sigkilled_process_leases_expire_and_spend_survives(pg_server: PgServer, schema: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=workers.hold, args=(pg_server.url, schema, 5, 3, ready))
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
        b = workers.backend(pg_server.url, schema)
        b.clock = lambda: now
        (u,) = await b.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal("0.5"))
        with pytest.raises(BudgetExceeded):  # the dead process's leases still hold headroom
            await b.reserve([c], Decimal("0.5"), ttl=30)
        b.clock = lambda: now + 31  # 31 s later (frozen clock): the leases have expired
        assert await b.reconcile() == 5
        (u,) = await b.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal(0))
        r = await b.reserve([c], Decimal("0.7"), ttl=30)
        await b.settle(r, Decimal("0.7"))
        (u,) = await b.usage([c])
        assert (u.committed, u.reserved) == (Decimal("1.0"), Decimal(0))
        assert (await b.audit())["mismatched"] == []
        await b.aclose()

    anyio.run(recover)
