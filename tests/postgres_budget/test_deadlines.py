"""A slow budget store cannot hold a request past its deadline, on PostgreSQL: the budget's
bucket row is held ``SELECT ... FOR UPDATE`` by another connection before the reservation or
while the upstream answers (the settlement), and every 1 s-deadline request still ends within
its deadline plus :data:`BOUND`, with ``DeadlineExceeded`` caused by a ``BudgetStoreTimeout``:
the server itself stopped the statement (``statement_timeout``), so no connection or worker
thread stays stuck on the lock. Both drivers: psycopg's asyncio pool and the threaded one."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, DeadlineExceeded, ModelCard, Price, SquirrelError
from squirrel_models.budget import CLEANUP_GRACE, STORE_MIN_S, Charge, LedgerRow
from squirrel_models.errors import BudgetStoreTimeout
from squirrel_models.testing import ScriptedProvider
from squirrel_models_postgres_budget import BudgetStoreTimeout as BackendTimeout
from squirrel_models_postgres_budget import PostgresBudgetBackend

from ..support.store_locks import LockingProvider, PgLocker
from .pgserver import PgServer

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)
Make = Callable[..., PostgresBudgetBackend]

DEADLINE = 1.0
#: How late past its deadline a request may end: the cleanup grace (a settlement that began
#: before the deadline may finish after it), one short try of a store call made after it
#: (STORE_MIN_S), and scheduling on a busy 2-core machine.
BOUND = CLEANUP_GRACE + STORE_MIN_S + 0.25
TTL = 10.0  # at least the configured timeout (2 s) + 5 s, as the config requires
PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)
GLOBAL = Charge("global", "total", "total", Decimal(1))
DRIVERS = ["auto", "threads"]  # auto: asyncio's pool under asyncio, threads under trio


def card(name: str) -> ModelCard:
    return ModelCard.for_provider("p", name, provider_type="scripted",
                                  features={"streaming", "system_prompt"},
                                  price=Price(Decimal("0.1"), Decimal("0.1")))


def row_lock(pg_server: PgServer, schema: str) -> PgLocker:
    return PgLocker(pg_server.url, f"SELECT 1 FROM {schema}.buckets WHERE scope = 'global' "
                                   "FOR UPDATE")


def table_locks(pg_server: PgServer, schema: str) -> PgLocker:
    return PgLocker(pg_server.url, f"LOCK TABLE {schema}.buckets, {schema}.reservations, "
                                   f"{schema}.ledger IN ACCESS EXCLUSIVE MODE")


@asynccontextmanager
async def manager(make: Callable[..., Any], backend: PostgresBudgetBackend,
                  provider: ScriptedProvider) -> AsyncIterator[Any]:
    mm = make({"budget": {"limits": [{"scope": "global", "limit": "1"}], "reservation_ttl": TTL},
               "timeout": 2.0, "fallback": {"options": {"retry": {"base_delay": 0.001}}}}, budget_backend=backend)
    async with mm:
        for c in provider.models:
            mm.register_model(c, provider)
        # The bucket row exists (and the pool is warm) before anyone locks it.
        await backend.release(await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60))
        yield mm


async def run(mm: Any, stream: bool) -> float:
    """One request with a 1 s deadline; returns how long it took. It must end in
    DeadlineExceeded caused by the store's timeout."""
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        if stream:
            async with mm.stream(PROMPT, timeout=DEADLINE) as s:
                async for _ in s:
                    pass
        else:
            await mm.complete(PROMPT, timeout=DEADLINE)
    wall = time.monotonic() - t0
    cause = info.value.__cause__
    # The store stopped its call at the deadline: in a settlement its timeout is the cause;
    # in a reservation the request's own cancellation (a TimeoutError) may come first.
    if isinstance(cause, BudgetStoreTimeout):
        assert isinstance(cause, BackendTimeout) and cause.by_deadline, repr(cause)
    else:
        assert isinstance(cause, TimeoutError) and not isinstance(cause, SquirrelError), repr(cause)
    return wall


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_locked_row_before_the_reservation(squirrel_manager: Callable[..., Any],
                                                 make_backend: Make, pg_server: PgServer,
                                                 schema: str, stream: bool, driver: str) -> None:
    p = ScriptedProvider("p", [card("m")])
    backend = make_backend(driver=driver, max_connections=2)
    async with manager(squirrel_manager, backend, p) as mm:
        with row_lock(pg_server, schema) as locker:
            await locker.lock()
            walls: list[float] = []

            async def one() -> None:
                walls.append(await run(mm, stream))

            async with anyio.create_task_group() as tg:  # more requests than connections
                for _ in range(4):
                    tg.start_soon(one)
            await locker.unlock()
        log.info("locked before the reservation: %s s", [round(w, 3) for w in walls])
        assert max(walls) <= DEADLINE + BOUND, walls
        assert p.calls["m"] == 0
        audit = await backend.audit()
        assert audit["open"] == 0 and audit["mismatched"] == []
        # Every connection is usable again at once: none was left waiting on the lock.
        await backend.release(await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60))


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_locked_row_during_the_settlement(squirrel_manager: Callable[..., Any],
                                                make_backend: Make, pg_server: PgServer,
                                                schema: str, stream: bool, driver: str) -> None:
    now = [time.time()]
    backend = make_backend(driver=driver, clock=lambda: now[0])
    with row_lock(pg_server, schema) as locker:
        p = LockingProvider("p", [card("m")], locker=locker)
        async with manager(squirrel_manager, backend, p) as mm:
            wall = await run(mm, stream)
            await locker.unlock()
            log.info("locked during the settlement: %.3f s", wall)
            assert wall <= DEADLINE + BOUND, wall
            assert p.calls["m"] == 1
            # The settlement never ran: its lease holds the worst case (no overspend
            # meanwhile) until it expires and reconcile gives the headroom back.
            assert (await backend.audit())["open"] == 1
            (u,) = await backend.usage([GLOBAL])
            assert u.reserved > 0 and u.committed == 0
            now[0] += TTL + 1
            assert await backend.reconcile() == 1
            (u,) = await backend.usage([GLOBAL])
            assert (u.reserved, u.committed) == (0, 0)


OPERATIONS = ["reserve", "settle", "release", "usage", "record", "reconcile"]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("driver", DRIVERS)
async def test_every_store_call_ends_by_the_callers_deadline(make_backend: Make,
                                                             pg_server: PgServer, schema: str,
                                                             operation: str, driver: str) -> None:
    backend = make_backend(driver=driver)
    held = await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
    with table_locks(pg_server, schema) as locker:
        await locker.lock()
        t0 = time.monotonic()
        raised: BudgetStoreTimeout | None = None
        with anyio.CancelScope(deadline=anyio.current_time() + 0.5) as scope:
            try:
                if operation == "reserve":
                    await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
                elif operation == "settle":
                    await backend.settle(held, Decimal("0.01"),
                                         ledger=LedgerRow("r", 1, "p", "p/m", "ok"))
                elif operation == "release":
                    await backend.release(held)
                elif operation == "usage":
                    await backend.usage([GLOBAL])
                elif operation == "record":
                    await backend.record([LedgerRow("r", 1, "p", "p/m", "ok")])
                else:
                    await backend.reconcile()
            except BudgetStoreTimeout as exc:
                raised = exc
        wall = time.monotonic() - t0
        await locker.unlock()
    assert 0.45 <= wall <= 0.5 + 0.25, wall
    if raised is None:
        # A reserve stopped at the deadline gives way to the caller's cancellation; usage is
        # not shielded, and psycopg's asyncio driver is cancelled with the caller's scope (it
        # cancels the query on the server).
        assert operation in ("reserve", "usage") and scope.cancelled_caught
    else:
        assert raised.by_deadline and raised.operation == operation
    audit = await backend.audit()
    assert audit["open"] == 1 and audit["mismatched"] == []


async def test_operation_timeout_bounds_a_call_without_deadline(make_backend: Make,
                                                                pg_server: PgServer,
                                                                schema: str) -> None:
    backend = make_backend(operation_timeout_s=0.3)
    await backend.release(await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60))
    with row_lock(pg_server, schema) as locker:
        await locker.lock()
        t0 = time.monotonic()
        with pytest.raises(BudgetStoreTimeout) as info, anyio.fail_after(5):
            await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
        wall = time.monotonic() - t0
        await locker.unlock()
    assert 0.25 <= wall <= 0.3 + 0.25, wall
    assert not info.value.by_deadline
