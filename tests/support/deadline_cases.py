"""The set-up the budget stores' deadline tests share (``tests/sqlite_budget/test_deadlines.py``,
``tests/postgres_budget/test_deadlines.py``): a 1 s-deadline request and the bound it must end
within, a priced model, a manager around a given backend, one request run to its
``DeadlineExceeded``, and each store call by name."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, DeadlineExceeded, ModelCard, Price, ServerError, SquirrelError
from squirrel_models.budget import CLEANUP_GRACE, STORE_MIN_S, Charge, LedgerRow
from squirrel_models.errors import BudgetStoreTimeout
from squirrel_models.testing import ScriptedProvider

from .stalls import Stalls, loop_stalls

__all__ = ["BOUND", "DEADLINE", "GLOBAL", "OPERATIONS", "PROMPT", "TTL", "assert_every_reservation_ends",
           "assert_no_overspend", "call", "call_locked", "card", "held_request", "manager", "request", "run",
           "runs"]

DEADLINE = 1.0
#: How late past its deadline a request may end: the cleanup grace (a settlement that began
#: before the deadline may finish after it), one short try of a store call made after it
#: (STORE_MIN_S), and scheduling on a busy 2-core machine.
BOUND = CLEANUP_GRACE + STORE_MIN_S + 0.25
TTL = 10.0  # at least the configured timeout (2 s) + 5 s, as the config requires
PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)
GLOBAL = Charge("global", "total", "total", Decimal(1))
OPERATIONS = ["reserve", "settle", "release", "usage", "record", "reconcile"]


def card(name: str) -> ModelCard:
    return ModelCard.for_provider("p", name, provider_type="scripted",
                                  features={"streaming", "system_prompt"},
                                  price=Price(Decimal("0.1"), Decimal("0.1")))


@asynccontextmanager
async def manager(make: Callable[..., Any], backend: Any, provider: ScriptedProvider, *,
                  warm: bool = False) -> AsyncIterator[Any]:
    """A started manager on ``backend`` with ``provider``'s models and a $1 global budget.
    ``warm``: reserve and release once first, so the bucket row exists (and the pool is warm)
    before anyone locks it."""
    mm = make({"budget": {"limits": [{"scope": "global", "limit": "1"}], "reservation_ttl": TTL},
               "timeout": 2.0, "fallback": {"options": {"retry": {"base_delay": 0.001}}}},
              budget_backend=backend)
    async with mm:
        for c in provider.models:
            mm.register_model(c, provider)
        if warm:
            await backend.release(await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60))
        yield mm


async def request(mm: Any, stream: bool) -> None:
    """One request with a 1 s deadline, answered or streamed to its end."""
    if stream:
        async with mm.stream(PROMPT, timeout=DEADLINE) as s:
            async for _ in s:
                pass
    else:
        await mm.complete(PROMPT, timeout=DEADLINE)


async def run(mm: Any, stream: bool, backend_timeout: type[BaseException],
              stalls: Stalls | None = None, also: Callable[[], Iterable[int]] | None = None) -> float:
    """One request with a 1 s deadline; returns how long it took, less the time other
    processes kept the loop's thread off the CPU (``stalls``, else measured here: see
    :func:`held_request`), or the processes of ``also`` (a database server's backends,
    which stop a call at its timeout: see ``loop_stalls``). It must end in DeadlineExceeded
    caused by the store's timeout (``backend_timeout``, the backend's own
    ``BudgetStoreTimeout`` class) or, in a reservation, the request's own cancellation."""
    if stalls is None:
        async with loop_stalls(also) as stalls:
            return await run(mm, stream, backend_timeout, stalls)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await request(mm, stream)
    wall = stalls.elapsed(t0)
    cause = info.value.__cause__
    # The store stopped its call at the deadline: in a settlement its timeout is the cause;
    # in a reservation the request's own cancellation (a TimeoutError) may come first.
    if isinstance(cause, BudgetStoreTimeout):
        assert isinstance(cause, backend_timeout) and cause.by_deadline, repr(cause)
    else:
        assert isinstance(cause, TimeoutError) and not isinstance(cause, SquirrelError), repr(cause)
    return wall


async def runs(mm: Any, stream: bool, backend_timeout: type[BaseException], n: int = 4,
               also: Callable[[], Iterable[int]] | None = None) -> list[float]:
    """``n`` requests at once (queued behind each other too), each as :func:`run`."""
    walls: list[float] = []

    async def one(stalls: Stalls) -> None:
        walls.append(await run(mm, stream, backend_timeout, stalls))

    async with loop_stalls(also) as stalls, anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one, stalls)
    return walls


async def call(backend: Any, operation: str, held: Any) -> None:
    """The store call ``operation`` (one of :data:`OPERATIONS`); ``held``: a reservation."""
    if operation == "reserve":
        await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
    elif operation == "settle":
        await backend.settle(held, Decimal("0.01"), ledger=LedgerRow("r", 1, "p", "p/m", "ok"))
    elif operation == "release":
        await backend.release(held)
    elif operation == "usage":
        await backend.usage([GLOBAL])
    elif operation == "record":
        await backend.record([LedgerRow("r", 1, "p", "p/m", "ok")])
    else:
        await backend.reconcile()


async def call_locked(backend: Any, operation: str, held: Any, locker: Any, seconds: float = 0.5,
                      also: Callable[[], Iterable[int]] | None = None
                      ) -> tuple[float, float, BudgetStoreTimeout | None, bool]:
    """``operation`` under a ``seconds`` deadline while ``locker`` holds the store locked:
    how long it took (the wall time, and the time less what other processes kept the loop's
    thread, or the processes of ``also``, off the CPU: the first bounds it from below, the
    second from above), the
    ``BudgetStoreTimeout`` it raised (None if none) and whether the deadline's cancellation
    ended it instead."""
    await locker.lock()
    raised: BudgetStoreTimeout | None = None
    async with loop_stalls(also) as stalls:
        t0 = time.monotonic()
        with anyio.CancelScope(deadline=anyio.current_time() + seconds) as scope:
            try:
                await call(backend, operation, held)
            except BudgetStoreTimeout as exc:
                raised = exc
        wall, spent = time.monotonic() - t0, stalls.elapsed(t0)
    await locker.unlock()
    return wall, spent, raised, scope.cancelled_caught


async def held_request(mm: Any, stream: bool, locker: Any) -> float:
    """One request with a 1 s deadline while ``locker`` holds the store (locked before it,
    or by the provider during it), which it unlocks afterwards: the request ends in
    ``DeadlineExceeded`` (or the upstream's ``ServerError``) within its deadline plus
    :data:`BOUND`, less the time other processes kept the loop's thread off the CPU
    (``tests/support/stalls.py``: at load average 20 the scheduler alone took more than the
    slack). Returns that time."""
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises((DeadlineExceeded, ServerError)):
            await request(mm, stream)
        wall = time.monotonic() - t0
        waited = stalls.elapsed(t0)
    await locker.unlock()
    assert waited <= DEADLINE + BOUND, (wall, waited)
    return waited


async def assert_no_overspend(backend: Any) -> None:
    """``committed + reserved <= limit`` of the global budget, and no ledger row twice."""
    (u,) = await backend.usage([GLOBAL])
    assert u.committed + u.reserved <= u.limit, u
    rows = await backend.rows()
    attempts = [(r.request_id, r.attempt) for r in rows]
    assert len(attempts) == len(set(attempts)), rows


async def assert_every_reservation_ends(backend: Any, now: list[float]) -> None:
    """Past every lease (``now``: the backend's clock, moved), reconcile leaves nothing open
    or reserved, and the committed spend is what the ledger says, within the limit."""
    now[0] += TTL + 1
    await backend.reconcile()
    audit = await backend.audit()
    assert audit["open"] == 0 and audit["mismatched"] == [], audit
    (u,) = await backend.usage([GLOBAL])
    assert u.reserved == 0, u
    assert u.committed == sum(r.cost for r in await backend.rows() if r.cost is not None)
    assert Decimal(0) <= u.committed <= GLOBAL.limit
