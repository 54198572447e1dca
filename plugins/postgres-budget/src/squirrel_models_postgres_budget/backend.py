"""The ``postgres`` budget backend: one budget and usage ledger for many router instances.

Amounts are integer nano-USD (rounded up; limits down) through :mod:`squirrel_models.sqlbudget`,
shared with the SQLite backend. Every budget operation is one call of a PL/pgSQL function (see
:mod:`.schema`): one round trip, one transaction, row locks taken in a fixed order. Leases are
dated by the database server's clock unless a ``clock`` is given (tests freeze one), so hosts
with skewed clocks still agree on when a lease expires.

Every budget call is bounded by the caller's deadline (the request's, or the manager's cleanup
bound; :func:`squirrel_models.budget.store_deadline`) and by the backend's own timeouts: the
driver sets the statement's ``statement_timeout`` to what is left, so the server stops a
statement stuck on a locked row and the call raises :class:`.BudgetStoreTimeout`; and the
caller waits for the call (for a pooled connection too) no longer than its deadline: then it
gets :class:`.BudgetStoreTimeout` with ``pending`` set while the call ends in the background
(see :mod:`.driver`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import anyio
import attrs
import psycopg
from squirrel_models.budget import Charge, LedgerRow, Reservation, ScopeUsage, StoreDeadline, store_deadline
from squirrel_models.ledger import CHARGE_OUTCOME, check_grouping
from squirrel_models.secrets import Secret
from squirrel_models.slices import SlicedBudget, Slices, SliceState, SliceSync
from squirrel_models.sqlbudget import (
    COST_ZEROS_SQL,
    LEDGER_FIELDS,
    UNREPORTED_SQL,
    Refusal,
    bucket_keys,
    from_nanos,
    ledger_row,
    ledger_values,
    reserve_shielded,
    summary_from_totals,
    to_nanos,
)
from squirrel_models.storethreads import WAIT_MARGIN_S, StoreThreads

from .driver import AsyncDriver, Rows, ThreadDriver, Undo, make_driver
from .errors import (
    BudgetStoreError,
    BudgetStoreTimeout,
    BudgetStoreUnavailable,
    map_psycopg_errors,
    translate,
)
from .options import PostgresBudgetOptions, connection_string
from .schema import migrate

__all__ = ["PostgresBudgetBackend"]

log = logging.getLogger("squirrel_models_postgres_budget")
_COLUMNS = ", ".join(LEDGER_FIELDS)
#: Ledger rows deleted per statement (and transaction) by ``prune``.
PRUNE_BATCH = 5_000
_CASTS = ("timestamptz", "text", "integer", "text", "text", "text", "bigint", "bigint", "bigint",
          "bigint", "bigint", "text", "double precision", "text[]", "text")
#: One ledger row's placeholders, in LEDGER_FIELDS order.
_ROW = ", ".join(f"%s::{t}" for t in _CASTS)

#: The group key of each ``ledger.summarize`` grouping over ``w`` (the window's rows) and, by
#: scope, ``j``: one row per scope, ``(none)`` for none. Days in UTC.
_GROUP_KEYS = {
    "model": ("w.model", ""),
    "provider": ("w.provider", ""),
    "scope": ("j.value", ", unnest(CASE WHEN cardinality(w.scopes) = 0 THEN ARRAY['(none)'] "
                         "ELSE w.scopes END) AS j(value)"),
    "day": ("to_char(w.at AT TIME ZONE 'UTC', 'YYYY-MM-DD')", ""),
}
_ATTEMPT = "w.outcome IN ('ok', 'error')"
#: A row that is a request's (not money charged without one, as ``ledger.summarize`` counts).
_REQUEST = f"w.outcome <> '{CHARGE_OUTCOME}'"
#: Per group: (group, requests, attempts, errors, fallbacks, input_tokens, output_tokens,
#: cost_nanos, cost_zeros, unpriced), as ``sqlbudget.summary_from_totals`` takes them (sums of
#: bigint are numeric: no overflow). A fallback is a request with more than one attempt in the
#: whole window, not just in the group.
_SUMMARY = """
WITH w AS MATERIALIZED (
         SELECT * FROM {s}.ledger WHERE at >= coalesce(%s::timestamptz, '-infinity')
                                    AND at < coalesce(%s::timestamptz, 'infinity')),
     per_request AS (SELECT request_id, count(*) FILTER (WHERE outcome IN ('ok', 'error')) > 1
                                        AS fallback
                     FROM w GROUP BY request_id),
     per_group_request AS (
         SELECT {key} AS g, w.request_id, bool_or({request}) AS request,
                count(*) FILTER (WHERE {attempt}) AS attempts,
                count(*) FILTER (WHERE w.outcome = 'error') AS errors,
                sum(w.input_tokens) AS tin, sum(w.output_tokens) AS tout, sum(w.cost) AS cost,
                min({zeros}) AS zeros,
                count(*) FILTER (WHERE w.cost IS NULL AND {attempt}) AS unpriced,
                sum(w.input_tokens + w.output_tokens)
                    FILTER (WHERE {unreported}) AS unreported
         FROM w{join} GROUP BY 1, 2)
SELECT g, count(*) FILTER (WHERE request), sum(attempts), sum(errors),
       count(*) FILTER (WHERE p.fallback), sum(tin),
       sum(tout), sum(cost), min(zeros), sum(unpriced), sum(unreported)
FROM per_group_request JOIN per_request AS p USING (request_id) GROUP BY g
"""


@attrs.define
class PostgresBudgetBackend(SlicedBudget):
    """Budgets and the usage ledger in a PostgreSQL schema shared by processes and hosts.

    The URL is read from ``$<options.url_env>`` when the backend is made (a missing variable
    is a ConfigError naming ``budget.options.url_env``), unless ``url`` is given. The pool is
    opened and the schema migrated on first use. ``clock`` (seconds since the epoch) dates
    leases when set; by default the server's clock does.
    """

    #: ``settle(..., ledger=row)`` writes the row in the settlement's transaction (one call of
    #: ``settle_with_ledger``): a process killed at any moment leaves both or neither.
    settles_with_ledger: ClassVar[bool] = True

    options: PostgresBudgetOptions
    clock: Callable[[], float] | None = None
    url: Secret | None = attrs.field(default=None, kw_only=True)
    _conninfo: Secret = attrs.field(init=False)
    _driver: AsyncDriver | ThreadDriver | None = attrs.field(default=None, init=False)
    _opening: anyio.Lock | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _slices: Slices | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.url is None:
            # A URL or key=value string: matched whole (its password is registered alone).
            self.url = Secret.from_env(self.options.url_env, field="budget.options.url_env", opaque=False)
        self._conninfo = connection_string(self.url, self.options)
        if self.options.slices:
            self._slices = Slices(self, self.options.slice_options(), self._cap())

    @property
    def schema(self) -> str:
        return self.options.schema

    def _now(self) -> float | None:
        return None if self.clock is None else self.clock()

    # --- connections ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and check or migrate the schema now rather than on first use.
        Raises BudgetStoreUnavailable if the database cannot be reached."""
        await self._ready()

    async def _ready(self, call: StoreDeadline | None = None) -> AsyncDriver | ThreadDriver:
        """The open driver; opened now if it is not yet, by ``startup_timeout_s`` or the
        deadline of the ``call`` that needs it (taken before any cancel shield), if earlier."""
        if self._driver is not None:
            return self._driver
        if self._closed:
            raise BudgetStoreError("open", "the backend is closed")
        deadline = store_deadline(self.options.startup_timeout_s)
        if call is not None and call.by_caller and call.at < deadline.at:
            deadline = call
        if self._opening is None:
            self._opening = anyio.Lock()
        # Another call may be opening it, by a later deadline than ours: wait no longer.
        with anyio.move_on_after(deadline.left() + WAIT_MARGIN_S) as waited:
            await self._opening.acquire()
        if waited.cancelled_caught:
            raise self._startup_error(deadline, "another call was still opening the backend")
        try:
            if self._driver is None:
                self._driver = await self._open_within(deadline)
        finally:
            self._opening.release()
        return self._driver

    async def _open_within(self, deadline: StoreDeadline) -> AsyncDriver | ThreadDriver:
        """Check or migrate the schema, then open the pool, by ``deadline`` (the caller's, else
        ``startup_timeout_s``): a database that does not answer, or whose schema another
        instance holds locked, fails start-up in time with :class:`.BudgetStoreTimeout`. The
        migration runs in a thread on a connection of its own (the same code under every event
        loop) under a ``statement_timeout`` and ``lock_timeout`` of what is left; if it has not
        answered by then it goes on in the background (one transaction per step, so the schema
        is never half-migrated) and start-up fails now."""
        o = self.options

        def late() -> BudgetStoreError:
            return self._startup_error(deadline, "the database did not answer in time")

        threads = StoreThreads("squirrel-postgres-open", 1)
        try:
            await threads.run(self._migrate, deadline, deadline=deadline, timeout_error=late,
                              wait_s=deadline.left() + WAIT_MARGIN_S, what="schema check")
        finally:
            threads.shutdown(wait=False)  # its one thread ends with its call
        driver = make_driver(o.driver, self._conninfo, min_size=o.min_connections,
                             max_size=o.max_connections, timeout=o.connect_timeout_s,
                             answer_timeout=self._cap() + 1,
                             statement_timeout=o.operation_timeout_s)
        with anyio.move_on_after(deadline.left() + WAIT_MARGIN_S) as scope:
            async with map_psycopg_errors("open", deadline):
                await driver.open()
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                await driver.close()
            raise late()
        return driver

    def _startup_error(self, deadline: StoreDeadline, detail: str) -> BudgetStoreTimeout:
        """Start-up ran out of time: say whose time, naming ``startup_timeout_s`` when it was
        the backend's own."""
        if deadline.by_caller:
            err = BudgetStoreTimeout("open", f"not opened by the request's deadline: {detail}",
                                     by_deadline=True)
        else:
            err = BudgetStoreTimeout(
                "open", f"not opened within budget.options.startup_timeout_s = "
                f"{self.options.startup_timeout_s:g} s (the database unreachable, or its schema "
                f"locked by another instance): {detail}")
        err.field = "budget.options.startup_timeout_s"
        return err

    def _migrate(self, deadline: StoreDeadline) -> None:
        """Check and migrate the schema on a connection of its own, each statement bounded by
        what is left of ``deadline`` (blocking: runs in a worker thread)."""
        try:
            # libpq counts connect_timeout in whole seconds, at least 2.
            with psycopg.connect(self._conninfo.reveal(), autocommit=True,
                                 connect_timeout=max(2, math.ceil(deadline.left()))) as conn:
                ms = str(max(1, int(deadline.work() * 1000)))
                conn.execute("SELECT set_config('statement_timeout', %s, false), "
                             "set_config('lock_timeout', %s, false)", (ms, ms))
                migrate(conn, self.options.schema)
        except psycopg.Error as exc:
            # Not chained: the original's text may carry the connection string.
            err = translate(exc, "open", deadline)
            if isinstance(err, BudgetStoreTimeout) or (
                    isinstance(err, BudgetStoreUnavailable) and deadline.left() == 0):
                raise self._startup_error(deadline, err.detail) from None
            raise err from None

    def _cap(self) -> float:
        """The longest a call may take by our own timeouts: a connection, then the statement."""
        return self.options.connect_timeout_s + self.options.operation_timeout_s

    def _deadline(self) -> StoreDeadline:
        """The deadline of a call made now (take it before any cancel shield)."""
        return store_deadline(self._cap())

    @staticmethod
    def _late(operation: str, deadline: StoreDeadline) -> Callable[[], BudgetStoreTimeout]:
        """The error of a call its caller stopped waiting for at its deadline."""
        def late() -> BudgetStoreTimeout:
            return BudgetStoreTimeout(
                operation, f"no answer by {deadline.why()} ({deadline.seconds:.2f}s); the call "
                "goes on in the background", by_deadline=True, pending=True)
        return late

    async def _fetch(self, operation: str, sql: str, params: Sequence[Any],
                     deadline: StoreDeadline | None = None, undo: Undo | None = None
                     ) -> list[tuple[Any, ...]]:
        deadline = deadline or self._deadline()
        driver = await self._ready(deadline)
        async with map_psycopg_errors(operation, deadline):
            return await driver.fetch(sql, params, deadline, late=self._late(operation, deadline),
                                      undo=undo, what=f"{operation} on the budget database")

    # --- budgets -------------------------------------------------------------------------

    async def slice_sync(self, syncs: Sequence[SliceSync], deadline: StoreDeadline,
                         lease_s: float) -> list[SliceState]:
        """Apply the flushes of ``syncs`` (see :mod:`squirrel_models.slices`): one call of the
        schema's ``slice_sync`` each, its own transaction with that slice's ledger rows."""
        # slice_refund runs after slice_sync, in its statement (one transaction).
        sql = (f"SELECT s.*, {self.schema}.slice_refund(%s, %s::bigint) "
               f"FROM {self.schema}.slice_sync(%s, %s::text[], %s::text[], "
               "%s::bigint[], %s::bigint, %s::bigint, %s::bigint, %s::bigint, %s::float8, "
               "%s::boolean, %s::boolean, %s::float8, %s::float8, %s::bigint[], "
               "%s::timestamptz[], %s::text[], %s::integer[], %s::text[], %s::text[], "
               "%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
               "%s::bigint[], %s::text[], %s::float8[], %s::text[], %s::text[]) AS s")
        out = []
        for s in syncs:
            cols: list[list[Any]] = [[] for _ in range(16)]
            for n, row in s.rows:
                values = ledger_values(row)
                for col, value in zip(cols, (n, *values[:13], json.dumps(values[13]),
                                             values[14]), strict=True):
                    col.append(value)
            params = (s.lease, s.holds, s.lease, [k.scope for k in s.keys], [k.bucket for k in s.keys],
                      [k.limit for k in s.keys], s.spent, s.excess, s.need, s.want, s.fraction,
                      s.close, s.known, self._now(), lease_s, *cols)
            with anyio.CancelScope(shield=True):
                ((amount, spent, excess, upto, room, expired, scope, bucket, limit, committed,
                  reserved, _),) = await self._fetch("slice_sync", sql, params, deadline)
            refusal = None if scope is None else Refusal(scope, bucket, int(limit),
                                                         int(committed), int(reserved))
            out.append(SliceState(int(amount), int(spent), int(excess), int(upto), int(room),
                                  bool(expired), refusal))
        return out

    # --- budgets without slices ----------------------------------------------------------

    async def direct_reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                             request_id: str = "") -> Reservation:
        nanos = to_nanos(amount)
        keys = bucket_keys(charges)
        rid = uuid.uuid4().hex
        sql = (f"SELECT * FROM {self.schema}.reserve(%s, %s::text[], %s::text[], %s::bigint[], "
               "%s::bigint, %s::float8, %s::float8, %s)")
        params = (rid, [k.scope for k in keys], [k.bucket for k in keys], [k.limit for k in keys],
                  nanos, self._now(), float(ttl), request_id)
        deadline = self._deadline()  # before the shield hides the caller's
        release = (f"SELECT {self.schema}.release_reservation(%s)", (rid,))

        def undo(rows: Rows) -> tuple[str, Sequence[Any]] | None:
            # Made after its caller left: nobody will settle it, so release it now.
            return release if rows and rows[0][0] else None

        async def make() -> Reservation:
            for attempt in (0, 1):
                ((ok, expires_at, scope, bucket, limit, committed, reserved, waiting),) = \
                    await self._fetch("reserve", sql, params, deadline, undo)
                if ok:
                    return Reservation(rid, amount, tuple(charges), float(expires_at), request_id)
                if not (waiting and attempt == 0):
                    raise Refusal(scope, bucket, limit, committed, reserved).error(amount)
                # Leases of a dead process are past expiry: give their headroom back and retry
                # (in a transaction of its own, so lock order stays global).
                await self._release_expired(deadline)
            raise AssertionError("unreachable")

        return await reserve_shielded(make, self.direct_release)

    async def direct_settle(self, reservation: Reservation, amount: Decimal, *,
                            ledger: LedgerRow | None = None) -> Decimal:
        nanos = to_nanos(amount)
        if ledger is None:
            sql, params = f"SELECT {self.schema}.settle(%s, %s::bigint)", (reservation.id, nanos)
        else:
            sql = f"SELECT {self.schema}.settle_with_ledger(%s, %s::bigint, {_ROW})"
            params = (reservation.id, nanos, *ledger_values(ledger))
        deadline = self._deadline()
        with anyio.CancelScope(shield=True):
            ((over,),) = await self._fetch("settle", sql, params, deadline)
        if over:
            # The manager logs it at WARNING, naming the model (TokenManager.settle).
            log.debug("reservation %s overspent by %s USD", reservation.id, from_nanos(over))
        return from_nanos(int(over))

    async def direct_release(self, reservation: Reservation) -> None:
        deadline = self._deadline()
        with anyio.CancelScope(shield=True):
            await self._fetch("release", f"SELECT {self.schema}.release_reservation(%s)",
                              (reservation.id,), deadline)

    async def direct_usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        rows = await self._fetch(
            "usage", f"SELECT * FROM {self.schema}.usage(%s::text[], %s::text[], %s::float8)",
            ([c.scope for c in charges], [c.bucket for c in charges], self._now()))
        return [ScopeUsage(c.scope, c.period, c.bucket, c.limit, from_nanos(committed),
                           from_nanos(reserved))
                for c, (committed, reserved) in zip(charges, rows, strict=True)]

    async def reconcile(self) -> int:
        """Release every lease past its expiry (their headroom returns), forget expired leases
        older than ``expired_retention_s`` and, with ``ledger_retention_days``, prune older
        ledger rows; returns how many leases were released."""
        released = await self._release_expired()
        days = self.options.ledger_retention_days
        if days is not None:
            ((now,),) = await self._fetch("reconcile", "SELECT coalesce(to_timestamp(%s::float8), "
                                          "clock_timestamp())", (self._now(),))
            await self.prune(now - timedelta(days=days))
        return released

    async def _release_expired(self, deadline: StoreDeadline | None = None) -> int:
        deadline = deadline or self._deadline()
        with anyio.CancelScope(shield=True):
            ((n,),) = await self._fetch(
                "reconcile", f"SELECT {self.schema}.reconcile(%s::float8, %s::float8)",
                (self._now(), self.options.expired_retention_s), deadline)
        return int(n)

    async def audit(self) -> dict[str, Any]:
        """Open and expired leases, and buckets whose reserved total disagrees with their open
        leases (always empty unless the tables were tampered with). One snapshot."""
        s = self.schema
        ((n_open, n_expired, wrong),) = await self._fetch("audit", f"""
            SELECT (SELECT count(*) FROM {s}.reservations WHERE state = 0),
                   (SELECT count(*) FROM {s}.reservations WHERE state = 1),
                   (SELECT coalesce(json_agg(json_build_array(b.scope, b.bucket, b.reserved,
                                                              coalesce(o.sum, 0))
                                             ORDER BY b.scope, b.bucket), '[]')
                    FROM {s}.buckets b
                    LEFT JOIN (SELECT k.s, k.bk, sum(r.amount) AS sum
                               FROM {s}.reservations r, unnest(r.scopes, r.buckets) AS k(s, bk)
                               WHERE r.state = 0 GROUP BY k.s, k.bk) o
                      ON o.s = b.scope AND o.bk = b.bucket
                    WHERE b.reserved <> coalesce(o.sum, 0))""", ())
        return {"open": int(n_open), "expired": int(n_expired),
                "mismatched": [tuple(w) for w in wrong]}

    # --- ledger --------------------------------------------------------------------------

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        """Append one ledger row per attempt (costs rounded up to the nano-USD), in one
        transaction."""
        if not rows:
            return
        sql = f"INSERT INTO {self.schema}.ledger ({_COLUMNS}) VALUES ({_ROW})"
        data = [ledger_values(r) for r in rows]
        deadline = self._deadline()
        with anyio.CancelScope(shield=True):
            driver = await self._ready(deadline)
            async with map_psycopg_errors("record", deadline):
                await driver.executemany(sql, data, deadline, late=self._late("record", deadline),
                                         what="record on the budget database")

    async def prune(self, before: datetime) -> int:
        """Delete the ledger rows with ``at < before``, oldest first, :data:`PRUNE_BATCH` rows
        per statement (each its own short transaction; rows another pruner holds are skipped);
        returns how many. Budgets are untouched: committed spend stays, so it equals the
        remaining rows' costs plus the pruned costs, which are logged."""
        sql = (f"WITH gone AS (DELETE FROM {self.schema}.ledger WHERE id IN ("
               f"SELECT id FROM {self.schema}.ledger WHERE at < %s ORDER BY at LIMIT %s "
               "FOR UPDATE SKIP LOCKED) RETURNING cost) "
               "SELECT count(*), coalesce(sum(cost), 0) FROM gone")
        if before.tzinfo is None:
            before = before.replace(tzinfo=UTC)
        rows = 0
        nanos = 0
        while True:
            ((n, cost),) = await self._fetch("prune", sql, (before, PRUNE_BATCH))
            rows += int(n)
            nanos += int(cost)
            if n < PRUNE_BATCH:
                break
        if rows:
            log.info("pruned %d ledger row(s) before %s costing %s USD", rows,
                     before.isoformat(), from_nanos(nanos))
        return rows

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        """Ledger rows with ``since <= at < until``, oldest first."""
        if self._slices is not None:
            await self._slices.flush_ledger()
        raw = await self._fetch(
            "rows", f"SELECT {_COLUMNS} FROM {self.schema}.ledger "
                    "WHERE at >= coalesce(%s::timestamptz, '-infinity') "
                    "AND at < coalesce(%s::timestamptz, 'infinity') ORDER BY at, id",
            (since, until))
        return [ledger_row(r) for r in raw]

    async def summarize(self, by: str, since: datetime | None = None,
                        until: datetime | None = None) -> list[dict[str, Any]]:
        """``ledger.summarize(await self.rows(since, until), by)``, aggregated by the server:
        one query, one row per group read back (``squirrel usage`` uses it)."""
        check_grouping(by)
        if self._slices is not None:
            await self._slices.flush_ledger()
        key, join = _GROUP_KEYS[by]
        sql = _SUMMARY.format(s=self.schema, key=key, join=join, attempt=_ATTEMPT, request=_REQUEST,
                              zeros=COST_ZEROS_SQL.replace("%", "%%"),  # psycopg's escape
                              unreported=UNREPORTED_SQL)
        return summary_from_totals(await self._fetch("summarize", sql, (since, until)))

    async def aclose(self) -> None:
        """Flush and hand back the slices (with ``slices``), then close the pool."""
        if self._slices is not None and self._driver is not None:
            await self._slices.aclose()
        self._closed = True
        driver, self._driver = self._driver, None
        if driver is not None:
            with anyio.CancelScope(shield=True):
                await driver.close()


