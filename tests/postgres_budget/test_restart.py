"""A server restart in the middle of traffic: refused with the typed error while it is down,
service resumes by itself, and no money is lost."""

from __future__ import annotations

import time
from decimal import Decimal

import anyio
import pytest
from squirrel_models.budget import Charge, Reservation
from squirrel_models.secrets import Secret
from squirrel_models.sqlbudget import to_nanos
from squirrel_models_postgres_budget import (
    BudgetStoreUnavailable,
    PostgresBudgetBackend,
    PostgresBudgetOptions,
)

from .pgserver import PASSWORD, PgServer

pytestmark = pytest.mark.anyio
C = Charge("global", "total", "total", Decimal("1000"))
AMOUNT, SPENT = Decimal("0.01"), Decimal("0.004")


async def test_restart_mid_traffic(own_server: PgServer, schema: str) -> None:
    b = PostgresBudgetBackend(PostgresBudgetOptions(schema=schema, connect_timeout_s=1.0,
                                                    max_connections=4), url=Secret(own_server.url))
    await b.open()
    phase = ["before"]
    ok: dict[str, int] = {"before": 0, "down": 0, "after": 0}
    refused: dict[str, int] = {"before": 0, "down": 0, "after": 0}
    settled = 0
    unsettled: list[tuple[Reservation, Decimal]] = []
    done = False
    messages: set[str] = set()
    leaked: list[bool] = []

    async def worker() -> None:
        nonlocal settled
        while not done:
            p = phase[0]
            try:
                r = await b.reserve([C], AMOUNT, ttl=600)
            except BudgetStoreUnavailable as exc:
                messages.add(str(exc).split(":")[0])
                leaked.append(PASSWORD in str(exc) or own_server.url in str(exc))
                refused[p] += 1
                await anyio.sleep(0.05)
                continue
            try:
                await b.settle(r, SPENT)
            except BudgetStoreUnavailable:
                unsettled.append((r, SPENT))  # the caller still owes this settle
                continue
            settled += to_nanos(SPENT)
            ok[p] += 1
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(own_server.stop)  # -m fast: sessions are terminated
        phase[0] = "down"
        await anyio.sleep(1.5)
        await anyio.to_thread.run_sync(own_server.start)
        phase[0] = "after"
        t = time.monotonic()
        while ok["after"] < 20 and time.monotonic() - t < 15:
            await anyio.sleep(0.05)
        recovery = time.monotonic() - t
        done = True

    assert ok["before"] > 0 and ok["after"] >= 20, (ok, refused, recovery)
    assert refused["down"] > 0  # refused, not counted in memory
    assert messages == {"budget database unavailable"} and not any(leaked)
    for r, spent in unsettled:  # what a caller would retry once the store is back
        await b.settle(r, spent)
        settled += to_nanos(spent)
    (u,) = await b.usage([C])
    assert to_nanos(u.committed) == settled  # no money lost, none counted twice
    audit = await b.audit()
    assert audit["mismatched"] == []
    # A reserve whose reply was lost with the connection may hold a lease until it expires.
    b.clock = lambda: time.time() + 601
    await b.reconcile()
    (u,) = await b.usage([C])
    assert u.reserved == 0
    await b.aclose()
