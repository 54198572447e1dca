"""A slow budget store cannot hold a request past its deadline: the SQLite file is held
locked (``BEGIN EXCLUSIVE``) by another process before the reservation, while the upstream
answers (the settlement), or when it fails (the release), and every 1 s-deadline request
still ends within its deadline plus :data:`BOUND`, with ``DeadlineExceeded`` caused by a
``BudgetStoreTimeout``. Reservations that could not be settled stay leases until they expire,
and ``reconcile`` gives their headroom back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import DeadlineExceeded, ServerError
from squirrel_models.errors import BudgetStoreTimeout
from squirrel_models.testing import Fail, ScriptedProvider
from squirrel_models_sqlite_budget import BudgetStoreTimeout as BackendTimeout
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from ..support import deadline_cases
from ..support.deadline_cases import BOUND, DEADLINE, GLOBAL, OPERATIONS, PROMPT, TTL, call_locked, card, request
from ..support.stalls import loop_stalls
from ..support.store_locks import LockingProvider, SqliteLocker

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def run(mm: Any, stream: bool) -> float:
    return await deadline_cases.run(mm, stream, BackendTimeout)


@asynccontextmanager
async def manager(make: Callable[..., Any], db_path: str, provider: ScriptedProvider, clock: Clock,
                  **options: Any) -> AsyncIterator[Any]:
    backend = SqliteBudgetBackend(SqliteBudgetOptions(path=db_path, **options), clock=clock)
    async with deadline_cases.manager(make, backend, provider) as mm:
        yield mm


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("connections", ["shared", "per_thread"])
async def test_locked_before_the_reservation(squirrel_manager: Callable[..., Any], db_path: str,
                                             stream: bool, connections: str) -> None:
    p = ScriptedProvider("p", [card("m")])
    async with manager(squirrel_manager, db_path, p, Clock(), connections=connections) as mm:
        with SqliteLocker(db_path) as locker:
            await locker.lock()
            walls = await deadline_cases.runs(mm, stream, BackendTimeout)
            await locker.unlock()
        log.info("locked before the reservation: %s s", [round(w, 3) for w in walls])
        assert max(walls) <= DEADLINE + BOUND, walls
        assert p.calls["m"] == 0
        audit = await mm.budget_backend.audit()
        assert audit["open"] == 0 and audit["mismatched"] == []
        assert await mm.budget_backend.rows() == []


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_locked_during_the_settlement(squirrel_manager: Callable[..., Any], db_path: str,
                                            stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    with SqliteLocker(db_path) as locker:
        p = LockingProvider("p", [card("m")], locker=locker)
        async with manager(squirrel_manager, db_path, p, clock) as mm:
            wall = await run(mm, stream)
            log.info("locked during the settlement: %.3f s", wall)
            assert wall <= DEADLINE + BOUND, wall
            assert p.calls["m"] == 1
            backend = mm.budget_backend
            # The answer's settlement never ran: its lease holds the worst case, so the budget
            # cannot overspend meanwhile, until it expires and reconcile gives it back. Read
            # while the file is still locked (WAL: readers pass): audit first waits for the
            # settlement going on in the background, which must end by its own bound; unlocked
            # earlier, a loaded machine let it commit within that bound after all.
            assert (await backend.audit())["open"] == 1
            (u,) = await backend.usage([GLOBAL])
            assert u.reserved > 0 and u.committed == 0
            await locker.unlock()
            assert "stays held until it expires" in caplog.text
            clock.offset = TTL + 1
            assert await backend.reconcile() == 1
            (u,) = await backend.usage([GLOBAL])
            assert (u.reserved, u.committed) == (0, 0)


async def test_locked_when_the_upstream_fails(squirrel_manager: Callable[..., Any],
                                              db_path: str) -> None:
    """The failed attempt's release and the retry's reservation both meet the lock."""
    with SqliteLocker(db_path) as locker:
        p = LockingProvider("p", [card("m")], locker=locker)
        p.script("m", Fail(ServerError("boom", status_code=500)))
        async with manager(squirrel_manager, db_path, p, Clock()) as mm, loop_stalls() as stalls:
            t0 = time.monotonic()
            # The upstream's error, or the deadline's, depending on where the time went.
            with pytest.raises((ServerError, DeadlineExceeded)):
                await mm.complete(PROMPT, timeout=DEADLINE)
            wall = stalls.elapsed(t0)  # time other processes had the CPU is forgiven
            await locker.unlock()
            log.info("locked when the upstream fails: %.3f s", wall)
            assert wall <= DEADLINE + BOUND, wall
            assert p.calls["m"] == 1


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_every_store_call_ends_by_the_callers_deadline(make_backend: Callable[..., Any],
                                                             db_path: str, operation: str) -> None:
    clock = Clock()
    backend = make_backend(clock=clock)
    held = await backend.reserve([GLOBAL], Decimal("0.01"), ttl=1)
    if operation == "usage":
        clock.offset = 5  # an expired lease: usage reconciles first, a write
    with SqliteLocker(db_path) as locker:
        wall, spent, raised, cancelled = await call_locked(backend, operation, held, locker)
    assert wall >= 0.45 and spent <= 0.5 + 0.25, (wall, spent)
    if raised is None:  # a reserve stopped at the deadline gives way to the cancellation
        assert operation == "reserve" and cancelled
    else:
        # usage first reconciles the expired lease: that write is what meets the lock
        assert raised.by_deadline and "the request's deadline" in str(raised)
        assert raised.operation == ("reconcile" if operation == "usage" else operation)
    # The store is usable at once, the failed call changed nothing.
    audit = await backend.audit()
    assert audit["mismatched"] == []
    assert audit["open"] == 1


async def test_busy_timeout_bounds_a_call_without_deadline(make_backend: Callable[..., Any],
                                                           db_path: str) -> None:
    backend = make_backend(busy_timeout_s=0.3)
    await backend.open()
    with SqliteLocker(db_path) as locker:
        await locker.lock()
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreTimeout) as info:
                await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
            wall, spent = time.monotonic() - t0, stalls.elapsed(t0)
        await locker.unlock()
    assert wall >= 0.25 and spent <= 0.3 + 0.25, (wall, spent)
    assert not info.value.by_deadline
    # And a deadline further away than busy_timeout_s does not lengthen it.
    with SqliteLocker(db_path) as locker:
        await locker.lock()
        async with loop_stalls() as stalls:
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreTimeout) as info, anyio.fail_after(5):
                await backend.reserve([GLOBAL], Decimal("0.01"), ttl=60)
            spent = stalls.elapsed(t0)
        await locker.unlock()
    assert spent <= 0.3 + 0.25 and not info.value.by_deadline, spent


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_locked_at_the_first_request(squirrel_manager: Callable[..., Any], db_path: str,
                                           stream: bool) -> None:
    """A manager not started yet starts on its first request: the budget file's reconcile
    meets the lock inside that request's deadline, not outside it."""
    first = SqliteBudgetBackend(SqliteBudgetOptions(path=db_path))
    await first.open()  # the file exists and is up to date
    await first.aclose()
    p = ScriptedProvider("p", [card("m")])
    backend = SqliteBudgetBackend(SqliteBudgetOptions(path=db_path))
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}],
                                      "reservation_ttl": TTL}, "timeout": 2.0},
                          budget_backend=backend)
    mm.register_model(p.models[0], p)
    with SqliteLocker(db_path) as locker:
        await locker.lock()
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded) as info:
                await request(mm, stream)
            wall = stalls.elapsed(t0)
        await locker.unlock()
    log.info("locked at the first request: %.3f s", wall)
    assert wall <= DEADLINE + BOUND, wall
    cause = info.value.__cause__
    assert cause is None or isinstance(cause, BudgetStoreTimeout), repr(cause)
    assert p.calls["m"] == 0
    async with mm:  # starts now that the file is free, and serves
        assert (await mm.complete(PROMPT, timeout=DEADLINE)).text


class ConnectionHog:
    """Another operation of this process that holds the backend's shared connection (a long
    prune, a slow disk): the store's own lock, held from a thread until :meth:`unlock`."""

    def __init__(self, backend: SqliteBudgetBackend) -> None:
        self._lock = backend._store._lock
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    async def lock(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._hold, daemon=True)
            self._thread.start()
            await anyio.to_thread.run_sync(self._held.wait)

    def _hold(self) -> None:
        with self._lock:
            self._held.set()
            self._release.wait(30)

    async def unlock(self) -> None:
        self._release.set()
        if self._thread is not None:
            await anyio.to_thread.run_sync(self._thread.join)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("phase", ["reservation", "settlement", "release"])
async def test_calls_queued_in_this_process_end_by_the_bound(
        squirrel_manager: Callable[..., Any], db_path: str, stream: bool, phase: str) -> None:
    """The request waits for its store calls no longer than its deadline (and the cleanup
    grace), even when they queue for this process's own connection: they go on in the
    background, and once the connection is free they settle, release or undo exactly once.
    The request was held until the queue's floor (QUEUE_MIN_S, 5 s) or the connection freed."""
    p = LockingProvider("p", [card("m")])
    if phase == "release":
        p.script("m", *[Fail(ServerError("boom", status_code=500))] * 3)
    async with manager(squirrel_manager, db_path, p, Clock()) as mm:
        backend = mm.budget_backend
        await backend.open()
        hog = ConnectionHog(backend)
        p.locker = hog
        if phase == "reservation":
            await hog.lock()
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises((DeadlineExceeded, ServerError)) as info:
                await request(mm, stream)
            wall = stalls.elapsed(t0)
        await hog.unlock()
        log.info("%s queued behind this process's connection: %.3f s", phase, wall)
        assert wall <= DEADLINE + BOUND, wall
        if phase == "settlement":
            assert isinstance(info.value, DeadlineExceeded)
            cause = info.value.__cause__
            assert isinstance(cause, BackendTimeout) and cause.by_deadline and cause.pending
        # The calls left in the background have run: a later call reads what they wrote.
        audit = await backend.audit()
        assert audit["open"] == 0 and audit["mismatched"] == [], audit
        (u,) = await backend.usage([GLOBAL])
        rows = await backend.rows()
        assert u.reserved == 0
        assert u.committed == sum(r.cost for r in rows if r.cost is not None)
        attempts = [(r.request_id, r.attempt) for r in rows]
        assert len(attempts) == len(set(attempts)), rows  # no row written twice
        if phase == "settlement":
            assert u.committed > 0 and [r.outcome for r in rows] == ["ok"]
