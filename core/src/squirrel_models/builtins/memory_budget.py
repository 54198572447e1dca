"""The in-memory budget backend (``backend = "memory"``): exact, thread-safe, one process.

Every operation runs under one lock with no ``await`` inside, so it is atomic across tasks
and threads. Spend is lost when the process exits: use ``sqlite`` for durable budgets.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal

import attrs

from ..budget import BudgetBackendType, Charge, LedgerRow, Reservation, ScopeUsage
from ..errors import BudgetExceeded
from ..hookspecs import hookimpl

ZERO = Decimal(0)


@attrs.define
class MemoryBudgetBackend:
    """Reservations and spend in process memory, plus an in-memory ledger."""

    clock: Callable[[], float] = time.time
    _committed: dict[tuple[str, str], Decimal] = attrs.field(factory=lambda: defaultdict(Decimal))
    _reserved: dict[tuple[str, str], Decimal] = attrs.field(factory=lambda: defaultdict(Decimal))
    _open: dict[str, Reservation] = attrs.field(factory=dict)
    # Expired leases, kept so a late settle still commits its spend exactly once.
    _expired: dict[str, Reservation] = attrs.field(factory=dict)
    _ledger: list[LedgerRow] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def _expire_locked(self) -> int:
        now = self.clock()
        expired = [r for r in self._open.values() if r.expires_at <= now]
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
            self._reserved[(c.scope, c.bucket)] -= r.amount
        return True

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        with self._lock:
            self._expire_locked()
            for c in charges:
                key = (c.scope, c.bucket)
                committed, reserved = self._committed[key], self._reserved[key]
                if committed + reserved + amount > c.limit:
                    raise BudgetExceeded(scope=c.scope, period=c.bucket, limit=c.limit,
                                         committed=committed, reserved=reserved,
                                         requested=amount)
            r = Reservation(uuid.uuid4().hex, amount, tuple(charges), self.clock() + ttl,
                            request_id)
            for c in charges:
                self._reserved[(c.scope, c.bucket)] += amount
            self._open[r.id] = r
            return r

    async def settle(self, reservation: Reservation, amount: Decimal) -> Decimal:
        with self._lock:
            # Only an open or expired-unsettled reservation commits, so settling is idempotent.
            if not (self._drop_locked(reservation)
                    or self._expired.pop(reservation.id, None) is not None):
                return ZERO
            for c in reservation.charges:
                self._committed[(c.scope, c.bucket)] += amount
            return max(amount - reservation.amount, ZERO)

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
            self._ledger.extend(rows)

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        with self._lock:
            return [r for r in self._ledger
                    if (since is None or r.at >= since) and (until is None or r.at < until)]

    async def aclose(self) -> None:
        return None


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType("memory", lambda options: MemoryBudgetBackend(),
                              description="in process memory; lost on exit")]
