"""Cancellation at random points of a request (before the call, mid-call, mid-stream, during
settle): no reservation, connection or unledgered dollar is left behind."""

from __future__ import annotations

import contextvars
import random
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelRequirements, SquirrelError
from squirrel_models.budget import Charge, LedgerRow, Reservation, ScopeUsage
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions, to_nanos

from ..support.faulty_server import FaultyServer
from . import compose
from .conftest import figure

pytestmark = pytest.mark.anyio

REQUESTS = 120
POINTS = ("before", "mid-call", "mid-stream", "settle")
#: The cancel scope of the request running in this task, for the backend to cancel mid-settle.
CURRENT: contextvars.ContextVar[anyio.CancelScope | None] = contextvars.ContextVar("current", default=None)


class SlowSettle:
    """The sqlite backend, but settle cancels the caller's request and then takes its time."""

    def __init__(self, inner: SqliteBudgetBackend) -> None:
        self.inner = inner
        self.settles_cancelled = 0

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        return await self.inner.reserve(charges, amount, ttl=ttl, request_id=request_id)

    async def settle(self, reservation: Reservation, amount: Decimal) -> Decimal:
        scope = CURRENT.get()
        if scope is not None:
            scope.cancel()
            self.settles_cancelled += 1
        await anyio.sleep(0.02)  # a cancellation arriving now must not lose the settlement
        return await self.inner.settle(reservation, amount)

    async def release(self, reservation: Reservation) -> None:
        await self.inner.release(reservation)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        return await self.inner.usage(charges)

    async def reconcile(self) -> int:
        return await self.inner.reconcile()

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        await self.inner.record(rows)

    async def rows(self, since: Any = None, until: Any = None) -> list[LedgerRow]:
        return await self.inner.rows(since, until)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_cancellation_at_random_points(anyio_backend: str, faulty: FaultyServer, canary_env: str,
                                             tmp_path: Path, squirrel_manager: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(4242)
    db = str(tmp_path / "budget.sqlite3")
    backend = SlowSettle(SqliteBudgetBackend(SqliteBudgetOptions(path=db)))
    outcomes: Counter[str] = Counter()
    points: Counter[str] = Counter()
    limiter = anyio.Semaphore(16)

    async with squirrel_manager(compose.config(faulty, db), budget_backend=backend) as mm:

        async def one(i: int) -> None:
            point = rng.choice(POINTS)
            points[point] += 1
            stream = point == "mid-stream" or (point != "before" and rng.random() < 0.3)
            model = "beta/trickle:0.02" if stream else rng.choice(["beta/slow:0.3", "gamma/ok"])
            need = ModelRequirements(models={model})
            req = AIRequest.from_prompt(f"cancel {i}", max_tokens=16, budget_key="a")
            async with limiter:
                with anyio.CancelScope() as scope:
                    if point == "before":
                        scope.cancel()
                    elif point == "mid-call":
                        scope.deadline = anyio.current_time() + rng.uniform(0, 0.35)
                    elif point == "settle":
                        CURRENT.set(scope)
                    try:
                        if stream:
                            async with mm.stream(req, need, timeout=5) as s:
                                stop = rng.randint(1, 6) if point == "mid-stream" else None
                                n = 0
                                async for _ in s:
                                    n += 1
                                    if n == stop:
                                        scope.cancel()
                                        await anyio.lowlevel.checkpoint()
                        else:
                            await mm.complete(req, need, timeout=5)
                        outcomes["finished"] += 1
                    except SquirrelError as exc:
                        outcomes[type(exc).__name__] += 1
                    finally:
                        CURRENT.set(None)
                if scope.cancelled_caught:
                    outcomes["cancelled"] += 1

        async with anyio.create_task_group() as tg:
            for i in range(REQUESTS):
                tg.start_soon(one, i)
        state = await compose.budget_state(backend.inner, [compose.GLOBAL])
        # Leases the manager left to expire (a settle or release stopped after its short try
        # past the deadline, on a loaded machine) are all that may stay open; reconcile gives
        # them back once expired.
        left = compose.leases_left(caplog.records)
        expired = await compose.state_after_expiry(backend.inner, [compose.GLOBAL])

    # Closed once the manager is: the wait is for the server's thread to see it, not a bound.
    with anyio.move_on_after(30):
        while faulty.open_connections:
            await anyio.sleep(0.02)
    g = state["usage"]["global"]
    assert outcomes["cancelled"] >= REQUESTS // 2, outcomes
    assert backend.settles_cancelled > 0
    assert state["audit"]["open"] <= left and state["audit"]["mismatched"] == [], (state["audit"], left)
    assert expired["audit"]["open"] == 0 and expired["audit"]["mismatched"] == [], expired["audit"]
    assert expired["rows"] == state["rows"]  # expiry releases; it charges nothing
    assert g.reserved == 0 or left, g
    g = expired["usage"]["global"]
    assert g.reserved == 0
    assert to_nanos(g.committed) == state["ledger_nanos"]  # every settled dollar is in the ledger
    assert faulty.open_connections == 0
    figure("cancellation", requests=REQUESTS, cancelled=outcomes["cancelled"],
           **{f"cancelled_{p}": points[p] for p in POINTS}, settles_cancelled=backend.settles_cancelled,
           open_reservations_after=state["audit"]["open"], reserved_after_usd=str(g.reserved),
           committed_equals_ledger=to_nanos(g.committed) == state["ledger_nanos"],
           open_connections_after=faulty.open_connections)
