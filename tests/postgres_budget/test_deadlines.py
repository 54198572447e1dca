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
from squirrel_models.errors import BudgetStoreTimeout
from squirrel_models.testing import ScriptedProvider
from squirrel_models_postgres_budget import BudgetStoreTimeout as BackendTimeout
from squirrel_models_postgres_budget import PostgresBudgetBackend

from ..support import deadline_cases
from ..support.deadline_cases import BOUND, DEADLINE, GLOBAL, OPERATIONS, TTL, call_locked, card
from ..support.stalls import loop_stalls
from ..support.store_locks import LockingProvider, PgLocker
from .pgserver import PgServer

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)
Make = Callable[..., PostgresBudgetBackend]

DRIVERS = ["auto", "threads"]  # auto: asyncio's pool under asyncio, threads under trio


def row_lock(pg_server: PgServer, schema: str) -> PgLocker:
    return PgLocker(pg_server.url, f"SELECT 1 FROM {schema}.buckets WHERE scope = 'global' "
                                   "FOR UPDATE")


def table_locks(pg_server: PgServer, schema: str) -> PgLocker:
    return PgLocker(pg_server.url, f"LOCK TABLE {schema}.buckets, {schema}.reservations, "
                                   f"{schema}.ledger IN ACCESS EXCLUSIVE MODE")


@asynccontextmanager
async def manager(make: Callable[..., Any], backend: PostgresBudgetBackend,
                  provider: ScriptedProvider) -> AsyncIterator[Any]:
    async with deadline_cases.manager(make, backend, provider, warm=True) as mm:
        yield mm


async def run(mm: Any, stream: bool, server: PgServer) -> float:
    """The request's time, forgiving what the server's backends waited for a CPU too: they
    stop a statement at its timeout (see ``test_pool_wait``)."""
    return await deadline_cases.run(mm, stream, BackendTimeout, also=server.backends)


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
            walls = await deadline_cases.runs(mm, stream, BackendTimeout, also=pg_server.backends)
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
            wall = await run(mm, stream, pg_server)
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


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("driver", DRIVERS)
async def test_every_store_call_ends_by_the_callers_deadline(make_backend: Make,
                                                             pg_server: PgServer, schema: str,
                                                             operation: str, driver: str) -> None:
    backend = make_backend(driver=driver)
    held = await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
    with table_locks(pg_server, schema) as locker:
        wall, spent, raised, cancelled = await call_locked(backend, operation, held, locker,
                                                           also=pg_server.backends)
    assert wall >= 0.45 and spent <= 0.5 + 0.25, (wall, spent)
    if raised is None:
        # A reserve stopped at the deadline gives way to the caller's cancellation; usage is
        # not shielded, and psycopg's asyncio driver is cancelled with the caller's scope (it
        # cancels the query on the server).
        assert operation in ("reserve", "usage") and cancelled
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
        # time another process had the CPU is forgiven, the loop's or the server's
        async with loop_stalls(pg_server.backends) as stalls:
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreTimeout) as info, anyio.fail_after(5):
                await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
            wall = time.monotonic() - t0
            spent = stalls.elapsed(t0)
        await locker.unlock()
    assert wall >= 0.25 and spent <= 0.3 + 0.25, (wall, spent)
    assert not info.value.by_deadline
