"""The in-memory budget backend (``backend = "memory"``): exact, thread-safe, one process.

Every operation runs under one lock with no ``await`` inside, so it is atomic across tasks
and threads. Spend is lost when the process exits: use ``sqlite`` for durable budgets.

The usage ledger keeps the most recent ``max_ledger_rows`` rows (one per attempt; default
10,000, about 4 MB): this is the default backend of long-running processes, so an unbounded
ledger would be a leak (0.4 KB per attempt, forever). Older rows are dropped first; budgets
are unaffected (spend is kept apart from the ledger). ``[budget.options] max_ledger_rows = 0``
keeps no rows; use the ``sqlite`` backend for a complete, durable ledger.

Rows the manager hands over unbuilt (``record_pending``) are kept as their values, one after
another in one deque, and built into :class:`LedgerRow` objects when first read: a kept row
is then no object the garbage collector tracks or counts (a tuple or a row per request kept
every young-generation collection busy with the ledger's newest rows).
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import attrs

from ..budget import BudgetBackendType, Charge, LedgerRow, PendingRow, Reservation, ScopeUsage, pending_row
from ..errors import BudgetExceeded, ConfigError
from ..hookspecs import hookimpl
from ..ledger import summarize
from ..money import MONEY

log = logging.getLogger("squirrel_models.budget")
ZERO = Decimal(0)
#: Ledger rows the in-memory backend keeps by default (the oldest are dropped first).
MAX_LEDGER_ROWS = 10_000
#: Values per ledger row (LedgerRow's fields; a PendingRow's length).
ROW_WIDTH = len(attrs.fields(LedgerRow))


def _check_rows(instance: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"must be a whole number >= 0, got {value!r}", field=attribute.name)


@attrs.frozen
class MemoryBudgetOptions:
    """``[budget.options]`` of the ``memory`` backend: ``max_ledger_rows``, how many ledger
    rows (one per attempt) to keep, newest first kept; 0 keeps none."""

    max_ledger_rows: int = attrs.field(default=MAX_LEDGER_ROWS, validator=_check_rows)


@attrs.define
class MemoryBudgetBackend:
    """Reservations and spend in process memory, plus an in-memory ledger of the latest
    ``max_ledger_rows`` attempts."""

    #: No method suspends (no ``await`` inside), so the manager needs no cancel shield around
    #: settle, release and record (see :class:`~squirrel_models.budget.BudgetBackend`).
    nonblocking: ClassVar[bool] = True
    #: ``settle(..., ledger=row)`` appends ``row`` under the settlement's lock, once.
    settles_with_ledger: ClassVar[bool] = True

    #: The clock leases expire by (``expires_at`` is on it): monotonic, since this one process
    #: owns every reservation; on the wall clock a jump forward (NTP, a resumed VM) released
    #: the reservations of requests still running, whose settles then counted as overspend.
    clock: Callable[[], float] = time.monotonic
    max_ledger_rows: int = attrs.field(default=MAX_LEDGER_ROWS, validator=_check_rows)
    _committed: dict[tuple[str, str], Decimal] = attrs.field(factory=lambda: defaultdict(Decimal))
    _reserved: dict[tuple[str, str], Decimal] = attrs.field(factory=lambda: defaultdict(Decimal))
    _open: dict[str, Reservation] = attrs.field(factory=dict)
    # Expired leases, kept so a late settle still commits its spend exactly once.
    _expired: dict[str, Reservation] = attrs.field(factory=dict)
    # (expires_at, id) of reservations, earliest first (settled ones leave lazily): finding
    # the expired ones costs O(log n) per expiry, not a scan of every open reservation on
    # every call (quadratic with a thousand requests in flight).
    _expiries: list[tuple[float, str]] = attrs.field(factory=list)
    # The ledger: rows built, then the values of the newer rows not built yet (ROW_WIDTH
    # per row, in LedgerRow's field order; see the module). Together at most max_ledger_rows.
    _ledger: deque[LedgerRow] = attrs.field(init=False)
    _values: deque[Any] = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        self._ledger = deque(maxlen=self.max_ledger_rows)
        self._values = deque(maxlen=self.max_ledger_rows * ROW_WIDTH)

    @classmethod
    def from_options(cls, options: MemoryBudgetOptions | None = None) -> MemoryBudgetBackend:
        return cls(max_ledger_rows=(options or MemoryBudgetOptions()).max_ledger_rows)

    def _expire_locked(self) -> int:
        now = self.clock()
        heap = self._expiries
        expired = []
        while heap and heap[0][0] <= now:
            r = self._open.get(heapq.heappop(heap)[1])
            if r is not None and r.expires_at <= now:
                expired.append(r)
        if len(heap) > 2 * len(self._open) + 1024:  # mostly settled: rebuild from the open ones
            heap[:] = [(r.expires_at, r.id) for r in self._open.values()]
            heapq.heapify(heap)
        for r in expired:
            self._drop_locked(r)
            self._expired[r.id] = r
        if len(self._expired) > 10_000:  # a late settle after this many expiries is dropped
            for rid in list(self._expired)[:5_000]:
                del self._expired[rid]
        return len(expired)

    def _drop_locked(self, r: Reservation) -> bool:
        if self._open.pop(r.id, None) is None:
            return False
        for c in r.charges:
            key = (c.scope, c.bucket)  # in MONEY, never the caller's decimal context
            self._reserved[key] = MONEY.subtract(self._reserved[key], r.amount)
        return True

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        with self._lock:
            self._expire_locked()
            for c in charges:
                key = (c.scope, c.bucket)
                committed, reserved = self._committed[key], self._reserved[key]
                if MONEY.add(MONEY.add(committed, reserved), amount) > c.limit:
                    raise BudgetExceeded(scope=c.scope, period=c.bucket, limit=c.limit,
                                         committed=committed, reserved=reserved,
                                         requested=amount)
            r = Reservation(os.urandom(16).hex(), amount, tuple(charges), self.clock() + ttl,
                            request_id)
            for c in charges:
                key = (c.scope, c.bucket)
                self._reserved[key] = MONEY.add(self._reserved[key], amount)
            self._open[r.id] = r
            heapq.heappush(self._expiries, (r.expires_at, r.id))
            return r

    async def settle(self, reservation: Reservation, amount: Decimal, *,
                     ledger: LedgerRow | None = None) -> Decimal:
        with self._lock:
            # Only an open or expired-unsettled reservation commits, so settling is idempotent.
            if not (self._drop_locked(reservation)
                    or self._expired.pop(reservation.id, None) is not None):
                return ZERO
            for c in reservation.charges:
                key = (c.scope, c.bucket)
                self._committed[key] = MONEY.add(self._committed[key], amount)
            if ledger is not None:
                self._add_locked((ledger,))
            return max(MONEY.subtract(amount, reservation.amount), ZERO)

    async def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._drop_locked(reservation)
            self._expired.pop(reservation.id, None)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        with self._lock:
            self._expire_locked()
            return [
                ScopeUsage(c.scope, c.period, c.bucket, c.limit,
                           self._committed[(c.scope, c.bucket)],
                           self._reserved[(c.scope, c.bucket)])
                for c in charges
            ]

    async def reconcile(self) -> int:
        with self._lock:
            return self._expire_locked()

    @property
    def open_reservations(self) -> int:
        return len(self._open)

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        with self._lock:
            self._add_locked(rows)

    def _add_locked(self, rows: Sequence[LedgerRow]) -> None:
        if not self._values:
            self._ledger.extend(rows)
        else:  # after rows not built yet: in order, as values too
            self._add_values_locked([attrs.astuple(r, recurse=False) for r in rows])

    def record_pending(self, rows: Sequence[PendingRow]) -> None:
        """Record a request's rows as the manager holds them (:data:`~squirrel_models.budget.
        PendingRow`), built into :class:`LedgerRow` objects only when read: most of the rows
        this ledger keeps are dropped unread, and kept as values they cost the garbage
        collector nothing (see the module). Synchronous (never suspends)."""
        with self._lock:
            self._add_values_locked(rows)

    def _add_values_locked(self, rows: Sequence[Sequence[Any]]) -> None:
        values, built = self._values, self._ledger
        for row in rows:
            values.extend(row)
            if built and len(built) + len(values) // ROW_WIDTH > self.max_ledger_rows:
                built.popleft()  # the oldest row goes first

    def _rows_locked(self) -> deque[LedgerRow]:
        values = self._values
        if values:
            it = iter(values)
            self._ledger.extend(
                pending_row(v) if type(v[13]) is float else LedgerRow(*v)
                for v in zip(*(it,) * ROW_WIDTH, strict=True))
            values.clear()
        return self._ledger

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        with self._lock:
            return [r for r in self._rows_locked()
                    if (since is None or r.at >= since) and (until is None or r.at < until)]

    async def prune(self, before: datetime) -> int:
        """Drop the ledger rows with ``at < before``; returns how many. Budgets are untouched."""
        with self._lock:
            ledger = self._rows_locked()
            gone = [r for r in ledger if r.at < before]
            if gone:
                kept = [r for r in ledger if r.at >= before]
                self._ledger.clear()
                self._ledger.extend(kept)
        if gone:
            log.info("pruned %d ledger row(s) before %s costing %s USD", len(gone),
                     before.isoformat(), sum((r.cost for r in gone if r.cost is not None), ZERO))
        return len(gone)

    async def summarize(self, by: str, since: datetime | None = None,
                        until: datetime | None = None) -> list[dict[str, Any]]:
        """The reference :func:`squirrel_models.ledger.summarize` over ``rows(since, until)``."""
        with self._lock:
            rows = [r for r in self._rows_locked()
                    if (since is None or r.at >= since) and (until is None or r.at < until)]
        return summarize(rows, by)

    async def aclose(self) -> None:
        return None


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType("memory", MemoryBudgetBackend.from_options, MemoryBudgetOptions,
                              description="in process memory; lost on exit; keeps the latest "
                                          "max_ledger_rows ledger rows")]
