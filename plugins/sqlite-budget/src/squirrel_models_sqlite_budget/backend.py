"""The ``sqlite`` budget backend: durable budgets shared by processes, and the usage ledger.

Amounts are kept as integer nano-USD (1e-9 USD). Reservations and settlements are rounded
*up* to the nano (a budget never under-counts), limits *down*; the ledger stores each
attempt's cost rounded up the same way. Every SQLite call runs in a worker thread
(:func:`anyio.to_thread.run_sync`), so the event loop never blocks, under asyncio and trio.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import attrs
from squirrel_models.budget import Charge, LedgerRow, Reservation, ScopeUsage
from squirrel_models.errors import BudgetExceeded, ConfigError

from .store import Key, Store

__all__ = ["SqliteBudgetBackend", "SqliteBudgetOptions", "from_nanos", "to_nanos"]

log = logging.getLogger("squirrel_models_sqlite_budget")
T = TypeVar("T")
NANOS = Decimal(10) ** 9
MAX_NANOS = 2**62  # about 4.6 billion USD: far from SQLite's int64 limit even when summed
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_nanos(amount: Decimal, *, up: bool = True, what: str = "amount") -> int:
    """``amount`` USD as integer nano-USD, rounded up (or down with ``up=False``)."""
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount >= 0, got {amount}")
    n = int((amount * NANOS).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))
    if n > MAX_NANOS:
        raise ValueError(f"{what} {amount} is too large")
    return n


def from_nanos(n: int) -> Decimal:
    return Decimal(n) / NANOS


def _micros(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - EPOCH) // timedelta(microseconds=1)


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"must be > 0, got {value!r}", field=attribute.name)


def _path(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or value == ":memory:":
        raise ConfigError("must be the path of a database file (it is created if missing)",
                          field=attribute.name)


def _one_of(*allowed: str) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in allowed:
            raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}",
                              field=attribute.name)
    return check


@attrs.frozen
class SqliteBudgetOptions:
    """``[budget.options]`` of ``backend = "sqlite"``.

    - ``path``: the database file, created (with its folder) if missing; ``~`` is expanded.
    - ``busy_timeout_s``: how long an operation waits for another writer before failing.
    - ``synchronous``: ``NORMAL`` (default; WAL survives a process crash, the last commits may
      be lost on power loss) or ``FULL`` (also durable across power loss, slower).
    - ``connections``: ``shared`` (one connection behind a lock, default and faster) or
      ``per_thread``.
    - ``expired_retention_s``: how long an expired lease is kept so that a settle arriving
      after expiry still commits its spend (default 7 days).
    """

    path: str = attrs.field(validator=_path)
    busy_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    synchronous: str = attrs.field(default="NORMAL", validator=_one_of("NORMAL", "FULL", "EXTRA"))
    connections: str = attrs.field(default="shared", validator=_one_of("shared", "per_thread"))
    expired_retention_s: float = attrs.field(default=7 * 86400.0, validator=_positive)


def _keys(charges: Sequence[Charge]) -> list[Key]:
    """One key per (scope, bucket), with the tightest limit when two limits share a bucket."""
    keys: dict[tuple[str, str], int] = {}
    for c in charges:
        limit = to_nanos(c.limit, up=False, what="limit") if c.limit.is_finite() else MAX_NANOS
        k = (c.scope, c.bucket)
        keys[k] = min(keys.get(k, limit), limit)
    return [(s, b, lim) for (s, b), lim in keys.items()]


@attrs.define
class SqliteBudgetBackend:
    """Budgets and the usage ledger in one SQLite file shared by threads and processes.

    ``clock`` (seconds since the epoch) dates leases; tests inject a frozen one. The file is
    opened, checked and migrated on first use, in a worker thread.
    """

    options: SqliteBudgetOptions
    clock: Callable[[], float] = time.time
    _store: Store = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        mode: Literal["shared", "per_thread"] = (
            "per_thread" if self.options.connections == "per_thread" else "shared")
        self._store = Store(str(Path(self.options.path).expanduser()),
                            self.options.busy_timeout_s, self.options.synchronous, mode)

    @property
    def path(self) -> str:
        return self._store.path

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    async def open(self) -> None:
        """Check, create or migrate the file now rather than on first use."""
        await self._run(self._store.open)

    # --- budgets -------------------------------------------------------------------------

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        nanos = to_nanos(amount)
        keys = _keys(charges)
        rid = uuid.uuid4().hex
        now = self.clock()
        # Shielded, so a reservation made while we are being cancelled is released again
        # rather than held until its lease expires.
        with anyio.CancelScope(shield=True):
            refusal = await self._run(self._store.reserve, rid, keys, nanos, now, now + ttl,
                                      request_id)
        if refusal is not None:
            raise BudgetExceeded(scope=refusal.scope, period=refusal.bucket,
                                 limit=from_nanos(refusal.limit),
                                 committed=from_nanos(refusal.committed),
                                 reserved=from_nanos(refusal.reserved), requested=amount)
        reservation = Reservation(rid, amount, tuple(charges), now + ttl, request_id)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._run(self._store.release, rid)
            raise
        return reservation

    async def settle(self, reservation: Reservation, amount: Decimal) -> Decimal:
        over = await self._run(self._store.settle, reservation.id, to_nanos(amount))
        if over:
            log.warning("reservation %s overspent by %s USD", reservation.id, from_nanos(over))
        return from_nanos(over)

    async def release(self, reservation: Reservation) -> None:
        await self._run(self._store.release, reservation.id)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        states = await self._run(self._store.usage, [(c.scope, c.bucket) for c in charges],
                                 self.clock())
        return [ScopeUsage(c.scope, c.period, c.bucket, c.limit, from_nanos(committed),
                           from_nanos(reserved))
                for c, (committed, reserved) in zip(charges, states, strict=True)]

    async def reconcile(self) -> int:
        """Release every lease past its expiry (their headroom returns) and forget expired
        leases older than ``expired_retention_s``; returns how many were released."""
        return await self._run(self._store.reconcile, self.clock(),
                               self.options.expired_retention_s)

    async def audit(self) -> dict[str, Any]:
        """Open and expired leases, and buckets whose reserved total disagrees with their open
        leases (always empty unless the file was tampered with)."""
        return await self._run(self._store.audit)

    # --- ledger --------------------------------------------------------------------------

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        """Append one ledger row per attempt (costs rounded up to the nano-USD)."""
        if not rows:
            return
        data = [(_micros(r.at), r.request_id, r.attempt, r.provider, r.model, r.outcome,
                 r.input_tokens, r.output_tokens, r.cached_tokens, r.reasoning_tokens,
                 None if r.cost is None else to_nanos(r.cost, what="cost"), r.error_type,
                 r.latency_s, json.dumps(list(r.scopes)), r.usage_source) for r in rows]
        with anyio.CancelScope(shield=True):
            await self._run(self._store.record, data)

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        """Ledger rows with ``since <= at < until``, oldest first."""
        raw = await self._run(self._store.rows, None if since is None else _micros(since),
                              None if until is None else _micros(until))
        return [LedgerRow(rid, attempt, provider, model, outcome, tin, tout, tcached, treason,
                          None if cost is None else from_nanos(cost), error, latency,
                          tuple(json.loads(scopes)), EPOCH + timedelta(microseconds=at), source)
                for (at, rid, attempt, provider, model, outcome, tin, tout, tcached, treason,
                     cost, error, latency, scopes, source) in raw]

    async def aclose(self) -> None:
        await self._run(self._store.close)
