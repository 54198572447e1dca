"""The ``sqlite`` budget backend: durable budgets shared by processes, and the usage ledger.

Amounts are kept as integer nano-USD (1e-9 USD) through :mod:`squirrel_models.sqlbudget`,
shared with the PostgreSQL backend. Reservations and settlements are rounded *up* to the nano
(a budget never under-counts), limits *down*, and a limit that is not finite means no limit;
the ledger stores each attempt's cost rounded up the same way. Every SQLite call runs in a
worker thread of the backend's own pool (:class:`squirrel_models.storethreads.StoreThreads`),
so the event loop never blocks, under asyncio and trio. A worker thread cannot be cancelled, so
each budget call is bounded instead: by the caller's deadline
(:func:`squirrel_models.budget.store_deadline`; the request's, or the manager's cleanup bound)
and ``busy_timeout_s``, through SQLite's busy timeout and a progress handler (see
:mod:`.store`); past it the call raises :class:`.BudgetStoreTimeout`. The caller waits for the
thread no longer than its deadline either: a call still queued for the connection then goes on
in the background (``BudgetStoreTimeout.pending``), a reservation it makes is released at once.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import anyio
import attrs
from squirrel_models.budget import (
    CLEANUP_GRACE,
    Charge,
    LedgerRow,
    Reservation,
    ScopeUsage,
    StoreDeadline,
    store_deadline,
)
from squirrel_models.ledger import check_grouping
from squirrel_models.slices import (
    SlicedBudget,
    Slices,
    SliceState,
    SliceSync,
)
from squirrel_models.sqlbudget import (
    bucket_keys,
    from_nanos,
    ledger_row,
    ledger_values,
    reserve_shielded,
    summary_from_totals,
    to_nanos,
)
from squirrel_models.storethreads import StoreThreads

from .errors import BudgetStoreTimeout
from .options import SqliteBudgetOptions
from .store import Store

__all__ = ["SqliteBudgetBackend", "SqliteBudgetOptions"]  # the options re-exported

log = logging.getLogger("squirrel_models_sqlite_budget")
T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - EPOCH) // timedelta(microseconds=1)


def _sql_row(row: LedgerRow) -> tuple[Any, ...]:
    """The shared encoding of a ledger row, with SQLite's own types for time and scopes."""
    at, *middle, scopes, source = ledger_values(row)
    return (_micros(at), *middle, json.dumps(scopes), source)


@attrs.define
class SqliteBudgetBackend(SlicedBudget):
    """Budgets and the usage ledger in one SQLite file shared by threads and processes.

    ``clock`` (seconds since the epoch) dates leases; tests inject a frozen one. The file is
    opened, checked and migrated on first use, in a worker thread.
    """

    #: ``settle(..., ledger=row)`` inserts the row in the settlement's ``BEGIN IMMEDIATE``
    #: transaction: a process killed at any moment leaves both or neither.
    settles_with_ledger: ClassVar[bool] = True

    options: SqliteBudgetOptions
    clock: Callable[[], float] = time.time
    _store: Store = attrs.field(init=False)
    _threads: StoreThreads = attrs.field(init=False)
    _slices: Slices | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        mode: Literal["shared", "per_thread"] = (
            "per_thread" if self.options.connections == "per_thread" else "shared")
        self._store = Store(str(Path(self.options.path).expanduser()),
                            self.options.busy_timeout_s, self.options.synchronous, mode)
        self._threads = StoreThreads("squirrel-sqlite-budget")
        if self.options.slices:
            self._slices = Slices(self, self.options.slice_options(), self.options.busy_timeout_s)

    @property
    def path(self) -> str:
        return self._store.path

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._threads.run(functools.partial(fn, *args))

    async def _bounded(self, operation: str, deadline: StoreDeadline, fn: Callable[..., T],
                       *args: Any, undo: Callable[[T], object] | None = None) -> T:
        """``fn(*args, deadline)`` in a worker thread, waited for until ``deadline`` (see
        :class:`~squirrel_models.storethreads.StoreThreads`)."""
        def late() -> BudgetStoreTimeout:
            return BudgetStoreTimeout(
                self.path, operation, f"no answer by {deadline.why()} ({deadline.seconds:.2f}s); "
                "the call goes on in the background", by_deadline=True, pending=True)
        return await self._threads.run(functools.partial(fn, *args, deadline), deadline=deadline,
                                       timeout_error=late, undo=undo, what=f"{operation} on {self.path}")

    async def open(self) -> None:
        """Check, create or migrate the file now rather than on first use."""
        await self._run(self._store.open)

    # --- budgets -------------------------------------------------------------------------

    async def slice_sync(self, syncs: Sequence[SliceSync], deadline: StoreDeadline,
                         lease_s: float) -> list[SliceState]:
        """One transaction applying the flushes of ``syncs`` (see :mod:`squirrel_models.slices`)."""
        encoded = [attrs.evolve(s, rows=tuple((n, _sql_row(r)) for n, r in s.rows)) for s in syncs]
        return await self._bounded("slice_sync", deadline, self._store.slice_sync, encoded,
                                   self.clock(), lease_s)

    # --- budgets without slices ----------------------------------------------------------

    async def direct_reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                             request_id: str = "") -> Reservation:
        nanos = to_nanos(amount)
        keys = bucket_keys(charges, unbounded=True)
        rid = uuid.uuid4().hex
        now = self.clock()
        deadline = store_deadline(self.options.busy_timeout_s)  # before the shield hides it

        def undo(refusal: object) -> None:
            # Made after its caller left: nobody will settle it, so release it now.
            if refusal is None:
                self._store.release(rid, StoreDeadline(time.monotonic() + CLEANUP_GRACE,
                                                       CLEANUP_GRACE, True))

        async def make() -> Reservation:
            refusal = await self._bounded("reserve", deadline, self._store.reserve, rid, keys,
                                          nanos, now, now + ttl, request_id, undo=undo)
            if refusal is not None:
                raise refusal.error(amount)
            return Reservation(rid, amount, tuple(charges), now + ttl, request_id)

        return await reserve_shielded(make, self.direct_release)

    async def direct_settle(self, reservation: Reservation, amount: Decimal, *,
                            ledger: LedgerRow | None = None) -> Decimal:
        row = None if ledger is None else _sql_row(ledger)
        over = await self._bounded("settle", store_deadline(self.options.busy_timeout_s),
                                   self._store.settle, reservation.id, to_nanos(amount), row)
        if over:
            # The manager logs it at WARNING, naming the model (TokenManager.settle).
            log.debug("reservation %s overspent by %s USD", reservation.id, from_nanos(over))
        return from_nanos(over)

    async def direct_release(self, reservation: Reservation) -> None:
        await self._bounded("release", store_deadline(self.options.busy_timeout_s),
                            self._store.release, reservation.id)

    async def direct_usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        states = await self._bounded("usage", store_deadline(self.options.busy_timeout_s),
                                     self._store.usage, [(c.scope, c.bucket) for c in charges],
                                     self.clock())
        return [ScopeUsage(c.scope, c.period, c.bucket, c.limit, from_nanos(committed),
                           from_nanos(reserved))
                for c, (committed, reserved) in zip(charges, states, strict=True)]

    async def reconcile(self) -> int:
        """Release every lease past its expiry (their headroom returns), forget expired leases
        older than ``expired_retention_s`` and, with ``ledger_retention_days``, prune older
        ledger rows; returns how many leases were released."""
        released = await self._bounded("reconcile", store_deadline(self.options.busy_timeout_s),
                                       self._store.reconcile, self.clock(),
                                       self.options.expired_retention_s)
        days = self.options.ledger_retention_days
        if days is not None:
            now = datetime.fromtimestamp(self.clock(), UTC)
            await self.prune(now - timedelta(days=days))
        return released

    async def audit(self) -> dict[str, Any]:
        """Open and expired leases, and buckets whose reserved total disagrees with their open
        leases (always empty unless the file was tampered with)."""
        return await self._run(self._store.audit)

    # --- ledger --------------------------------------------------------------------------

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        """Append one ledger row per attempt (costs rounded up to the nano-USD)."""
        if not rows:
            return
        data = [_sql_row(r) for r in rows]
        # Not shielded: a caller that leaves (or whose deadline passes) leaves the rows to be
        # written in the background.
        await self._bounded("record", store_deadline(self.options.busy_timeout_s),
                            self._store.record, data)

    async def prune(self, before: datetime) -> int:
        """Delete the ledger rows with ``at < before``, in short batches (each its own write
        transaction); returns how many. Budgets are untouched: committed spend stays, so it
        equals the remaining rows' costs plus the pruned costs, which are logged."""
        rows, nanos = await self._run(self._store.prune, _micros(before))
        if rows:
            log.info("pruned %d ledger row(s) before %s costing %s USD", rows,
                     before.isoformat(), from_nanos(nanos))
        return rows

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        """Ledger rows with ``since <= at < until``, oldest first."""
        if self._slices is not None:
            await self._slices.flush_ledger()
        raw = await self._run(self._store.rows, None if since is None else _micros(since),
                              None if until is None else _micros(until))
        return [ledger_row((EPOCH + timedelta(microseconds=at), *middle, json.loads(scopes), source))
                for at, *middle, scopes, source in raw]

    async def summarize(self, by: str, since: datetime | None = None,
                        until: datetime | None = None) -> list[dict[str, Any]]:
        """``ledger.summarize(await self.rows(since, until), by)``, aggregated by SQLite: one
        query, one row per group read back (``squirrel usage`` uses it)."""
        check_grouping(by)
        if self._slices is not None:
            await self._slices.flush_ledger()
        totals = await self._run(self._store.summarize, by,
                                 None if since is None else _micros(since),
                                 None if until is None else _micros(until))
        return summary_from_totals(totals)

    async def aclose(self) -> None:
        """Flush and hand back the slices (with ``slices``), wait for every call still running
        (each bounded by its own deadline), then close."""
        if self._slices is not None:
            await self._slices.aclose()
        def close() -> None:
            self._threads.shutdown()
            self._store.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)
