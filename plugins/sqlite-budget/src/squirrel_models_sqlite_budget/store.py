"""Synchronous SQLite operations behind the async backend; every method runs in a worker thread.

Every write is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken *before* the
headroom is read, so no other thread or process can reserve between our read and our write.
Amounts are integer nano-USD here; the async layer converts Decimals.

Budget operations take a ``deadline`` (:class:`~squirrel_models.budget.StoreDeadline`), so
the worker thread itself returns by then (a thread cannot be cancelled from outside) with
``BudgetStoreTimeout``, its transaction rolled back: the wait for the shared connection is cut
to what is left of it, and the wait for the file's write lock too. SQLite's own busy timeout
is set once to a short slice (:data:`BUSY_SLICE_S`) and ``BEGIN IMMEDIATE`` is retried until
the deadline (or ``busy_timeout_s``), so a call needs no extra statement to learn its bound; a
progress handler stops a long statement still running at the deadline.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import attrs
from squirrel_models.budget import StoreDeadline
from squirrel_models.forks import forget_in_child
from squirrel_models.ledger import CHARGE_OUTCOME
from squirrel_models.slices import SliceState, SliceSync, slice_charge_row, slice_target
from squirrel_models.sqlbudget import COST_ZEROS_SQL, LEDGER_FIELDS, UNREPORTED_SQL, BucketKey, Refusal

from .errors import BudgetStoreError, map_sqlite_errors, timed_out
from .schema import connect, open_database

__all__ = ["Store"]

LEDGER_COLUMNS = ", ".join(LEDGER_FIELDS)
#: Ledger rows deleted per write transaction by ``prune`` (a few milliseconds of write lock).
PRUNE_BATCH = 2_000
#: SQLite's busy timeout on our connections: ``BEGIN IMMEDIATE`` waits for another writer in
#: slices of this, retried until the operation's deadline.
BUSY_SLICE_S = 0.05
#: SQLite virtual machine instructions between two looks at the clock by a bounded statement
#: (a budget statement takes far fewer: the handler, which needs the GIL, never runs for it).
_PROGRESS_STEPS = 100_000
_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_INCREMENTAL = 2  # PRAGMA auto_vacuum
#: Connections a forked child inherited: kept open and never used nor closed there (SQLite:
#: a connection must not cross a fork; closing it in the child could touch the parent's WAL).
_INHERITED: list[sqlite3.Connection] = []
_INSERT_ROW = (f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES "
               f"({', '.join('?' * len(LEDGER_FIELDS))})")

#: The group key of each ``ledger.summarize`` grouping, over ``w`` (the window's rows) and, by
#: scope, ``j``: one row per scope, ``(none)`` for none. Days: UTC, from integer seconds (a
#: fractional unixepoch is rounded to the millisecond, which could move 23:59:59.9999 on).
_GROUP_KEYS = {
    "model": ("w.model", ""),
    "provider": ("w.provider", ""),
    "scope": ("j.value", ", json_each(CASE WHEN w.scopes = '[]' THEN '[\"(none)\"]' "
                         "ELSE w.scopes END) AS j"),
    "day": ("strftime('%Y-%m-%d', CASE WHEN w.at >= 0 THEN w.at / 1000000 "
            "ELSE (w.at - 999999) / 1000000 END, 'unixepoch')", ""),
}
_ATTEMPT = "w.outcome IN ('ok', 'error')"
#: A row that is a request's (not money charged without one, as ``ledger.summarize`` counts).
_REQUEST = f"w.outcome <> '{CHARGE_OUTCOME}'"
#: Per group: (group, requests, attempts, errors, fallbacks, input_tokens, output_tokens,
#: cost_nanos, cost_zeros, unpriced), as ``sqlbudget.summary_from_totals`` takes them, but with
#: the cost as whole USD and the nano-USD left over: SQLite's ``sum`` of 64-bit integers
#: raises on overflow, and a summed split cannot overflow. A fallback is a request with more
#: than one attempt in the whole window, not just in the group.
_SUMMARY = """
WITH w AS (SELECT * FROM ledger WHERE at >= ? AND at < ?),
     per_request AS (SELECT request_id, sum(outcome IN ('ok', 'error')) > 1 AS fallback
                     FROM w GROUP BY request_id),
     per_group_request AS (
         SELECT {key} AS g, w.request_id, max({request}) AS request, sum({attempt}) AS attempts,
                sum(w.outcome = 'error') AS errors, sum(w.input_tokens) AS tin,
                sum(w.output_tokens) AS tout, sum(w.cost / 1000000000) AS usd,
                sum(w.cost % 1000000000) AS nanos, min({zeros}) AS zeros,
                sum(w.cost IS NULL AND {attempt}) AS unpriced,
                sum(CASE WHEN {unreported}
                         THEN w.input_tokens + w.output_tokens ELSE 0 END) AS unreported
         FROM w{join} GROUP BY 1, 2)
SELECT g, sum(request), sum(attempts), sum(errors), sum(p.fallback), sum(tin), sum(tout),
       sum(usd), sum(nanos), min(zeros), sum(unpriced), sum(unreported)
FROM per_group_request JOIN per_request AS p USING (request_id) GROUP BY g
"""


@attrs.define
class Store:
    """The database file: connections, and each budget and ledger operation.

    ``mode`` ``"shared"``: one connection guarded by a lock (the fastest here: SQLite takes one
    writer at a time anyway, and threads of one process then queue on a lock instead of
    polling the file lock). ``"per_thread"``: a connection per worker thread.
    """

    path: str
    busy_timeout_s: float = 30.0
    synchronous: str = "NORMAL"
    mode: Literal["shared", "per_thread"] = "shared"
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _open_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _first: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _all: list[sqlite3.Connection] = attrs.field(factory=list, init=False)
    _local: threading.local = attrs.field(factory=threading.local, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    # When an operation last gave up on another connection's write lock (time.monotonic()):
    # operations queued behind it that are already past their deadline then fail at once
    # instead of each waiting its short try (a queue of them drained one slice at a time).
    _busy_seen: float = attrs.field(default=-1.0, init=False)

    def __attrs_post_init__(self) -> None:
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The parent's connections (and locks its threads may hold): the child opens its own
        # on its next operation.
        _INHERITED.extend(self._all)
        self._first, self._all, self._local = None, [], threading.local()
        self._lock, self._open_lock = threading.Lock(), threading.Lock()
        self._busy_seen = -1.0

    # --- connections ---------------------------------------------------------------------

    def open(self, deadline: StoreDeadline | None = None) -> None:
        """Check, create or migrate the file (once), waiting for another writer no longer
        than ``deadline`` allows. Raises UnusableDatabase."""
        with self._open_lock:
            if self._closed:
                raise BudgetStoreError(self.path, "open", "the backend is closed")
            if self._first is None:
                busy = self.busy_timeout_s if deadline is None else min(self.busy_timeout_s,
                                                                        deadline.work())
                with map_sqlite_errors(self.path, "open", deadline):
                    first = open_database(self.path, busy_timeout_s=busy,
                                          synchronous=self.synchronous)
                    first.execute(f"PRAGMA busy_timeout = {int(BUSY_SLICE_S * 1000)}")
                    self._first = first
                self._all.append(self._first)
                self._local.conn = self._first

    def _conn(self, deadline: StoreDeadline | None = None) -> sqlite3.Connection:
        if self._first is None or self._closed:
            self.open(deadline)
        if self.mode == "shared":
            assert self._first is not None
            return self._first
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with map_sqlite_errors(self.path, "open"):
                conn = connect(self.path, busy_timeout_s=BUSY_SLICE_S,
                               synchronous=self.synchronous)
            self._local.conn = conn
            with self._open_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _using(self, operation: str, deadline: StoreDeadline | None = None
               ) -> Iterator[sqlite3.Connection]:
        """The connection, for one operation bounded by ``deadline`` (None: by
        ``busy_timeout_s`` alone)."""
        with map_sqlite_errors(self.path, operation, deadline):
            conn = self._conn(deadline)
            if self.mode == "shared":
                wait = -1.0 if deadline is None else deadline.queue()
                if not self._lock.acquire(timeout=wait):
                    raise timed_out(self.path, operation, deadline,
                                    "another operation of this process held the connection")
                try:
                    with self._bounded(conn, deadline):
                        yield conn
                finally:
                    self._lock.release()
            else:
                with self._bounded(conn, deadline):
                    yield conn

    @staticmethod
    @contextmanager
    def _bounded(conn: sqlite3.Connection, deadline: StoreDeadline | None) -> Iterator[None]:
        """Stop any statement still running at ``deadline`` (a progress handler)."""
        if deadline is None:
            yield
            return
        at = max(deadline.at, time.monotonic() + deadline.work())
        conn.set_progress_handler(lambda: time.monotonic() > at, _PROGRESS_STEPS)
        try:
            yield
        finally:
            conn.set_progress_handler(None, 0)

    def _until(self, deadline: StoreDeadline | None) -> float:
        """When to stop waiting for the file's write lock (``time.monotonic()``)."""
        if deadline is None:
            return time.monotonic() + self.busy_timeout_s
        return time.monotonic() + deadline.work()

    @staticmethod
    def _busy_retry(conn: sqlite3.Connection, sql: str, until: float, script: bool = False
                    ) -> None:
        """``sql`` (which takes the write lock), retried while another connection holds the
        lock, until ``until``; then SQLite's busy error propagates. ``script``: run it with
        ``executescript`` (every step)."""
        while True:
            try:
                if script:
                    conn.executescript(sql)
                else:
                    conn.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", 0)
                if code & 0xFF not in _BUSY or time.monotonic() + BUSY_SLICE_S > until:
                    raise

    @contextmanager
    def _write(self, operation: str, deadline: StoreDeadline | None = None
               ) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on exit, rolled back on error
        (including a commit stopped at the deadline)."""
        until = self._until(deadline)
        with self._using(operation, deadline) as conn:
            if (deadline is not None and deadline.left() == 0
                    and time.monotonic() - self._busy_seen < 2 * BUSY_SLICE_S):
                raise timed_out(self.path, operation, deadline,
                                "the file is locked by another connection")
            try:
                self._busy_retry(conn, "BEGIN IMMEDIATE", until)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY:
                    self._busy_seen = time.monotonic()
                raise
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.set_progress_handler(None, 0)  # the rollback itself is never stopped
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._open_lock:
            self._closed = True
            conns, self._all = self._all, []
            self._first = None
        with self._lock:
            for conn in conns:
                conn.close()

    # --- budgets -------------------------------------------------------------------------

    @staticmethod
    def _expire(conn: sqlite3.Connection, now: float) -> int:
        """Return the headroom of open leases past their expiry (inside a write transaction).
        An expired *slice* is charged in full instead: its process may have spent any of its
        room without flushing, so the room is committed, with a ledger row naming the slice
        (a crash loses room for a while, never money)."""
        expired = conn.execute(
            "SELECT id, amount, charges, slice FROM reservations WHERE state = 0 AND expires_at <= ?",
            (now,)).fetchall()
        for rid, amount, charges, is_slice in expired:
            pairs = json.loads(charges)
            if is_slice:
                conn.executemany(
                    "UPDATE buckets SET reserved = reserved - ?, committed = committed + ? "
                    "WHERE scope = ? AND bucket = ?",
                    [(amount, amount, scope, bucket) for scope, bucket in pairs])
                charge = slice_charge_row(rid, amount, sorted({s for s, _ in pairs}), now)
                cur = conn.execute(_INSERT_ROW, (
                    int(now * 1_000_000), charge.request_id, charge.attempt, charge.provider,
                    charge.model, charge.outcome, 0, 0, 0, 0, amount, None, 0.0,
                    json.dumps(list(charge.scopes)), charge.usage_source))
                conn.execute("UPDATE reservations SET state = 1, charge_row = ? WHERE id = ?",
                             (cur.lastrowid, rid))
            else:
                conn.executemany(
                    "UPDATE buckets SET reserved = reserved - ? WHERE scope = ? AND bucket = ?",
                    [(amount, scope, bucket) for scope, bucket in pairs])
                conn.execute("UPDATE reservations SET state = 1 WHERE id = ?", (rid,))
        return len(expired)

    def slice_sync(self, syncs: Sequence[SliceSync], now: float, lease_s: float,
                   deadline: StoreDeadline | None = None) -> list[SliceState]:
        """Apply each slice's flush (see :class:`squirrel_models.slices.SliceSync`) in one
        write transaction: cumulative spend moved from the slice's room to committed (only
        what the store has not applied yet), its new ledger rows, its room topped up to
        ``want`` (at most ``fraction`` of what is left, never below ``need``: else nothing is
        added) or handed back down to ``want``, its lease renewed; ``close`` with no room left
        drops it."""
        out: list[SliceState] = []
        with self._write("slice_sync", deadline) as conn:
            self._expire(conn, now)
            for s in syncs:
                row = conn.execute(
                    "SELECT amount, state, spent, excess, rows_upto, charge_row, slice "
                    "FROM reservations WHERE id = ?", (s.lease,)).fetchone()
                pairs = [(k.scope, k.bucket) for k in s.keys]
                if row is None:
                    if s.known:
                        # Flushed before, then forgotten (expired longer ago than the
                        # retention): its room was charged in full long ago.
                        amount, state, spent, excess, upto, charge_row = 0, 1, s.spent, 0, 0, None
                    else:
                        conn.execute(
                            "INSERT INTO reservations (id, amount, charges, request_id, created_at, "
                            "expires_at, slice) VALUES (?, 0, ?, 'slice', ?, ?, 1)",
                            (s.lease, json.dumps(pairs), now, now + lease_s))
                        amount, state, spent, excess, upto, charge_row = 0, 0, 0, 0, 0, None
                else:
                    amount, state, spent, excess, upto, charge_row, is_slice = row
                    if not is_slice:
                        raise BudgetStoreError(self.path, "slice_sync",
                                               f"{s.lease} is a reservation, not a slice")
                d_spent = max(s.spent - spent, 0)
                d_excess = max(s.excess - excess, 0)
                rows = [r for n, r in s.rows if n > upto]
                if state == 0:
                    # Whatever the process reports is committed (money is never hidden); the
                    # room it held is what leaves ``reserved``.
                    moved, committed_add = min(d_spent, amount), d_spent + d_excess
                    amount -= moved
                else:
                    # Charged in full at expiry: what was spent within the slice is in that
                    # charge already, so its row gives that much to the requests' own rows.
                    # Then, from a process that knows it was charged, the charge left is at
                    # most what its open reservations hold: the rest was never spent.
                    moved, covered, refund = 0, 0, 0
                    if charge_row is not None and (d_spent or s.holds is not None):
                        cost = conn.execute("SELECT cost FROM ledger WHERE id = ?",
                                            (charge_row,)).fetchone()
                        left = int(cost[0]) if cost is not None else 0
                        covered = min(d_spent, left)
                        if s.holds is not None:
                            refund = max(left - covered - s.holds, 0)
                        conn.execute("UPDATE ledger SET cost = cost - ? WHERE id = ?",
                                     (covered + refund, charge_row))
                    committed_add = d_spent - covered + d_excess - refund
                if moved or committed_add:
                    conn.executemany(
                        "INSERT INTO buckets (scope, bucket, committed) VALUES (?, ?, ?) "
                        "ON CONFLICT (scope, bucket) DO UPDATE SET "
                        "committed = committed + excluded.committed, reserved = reserved - ?",
                        [(scope, bucket, committed_add, moved) for scope, bucket in pairs])
                if rows:
                    conn.executemany(_INSERT_ROW, rows)
                upto = max(upto, max((n for n, _ in s.rows), default=0))
                refusal: Refusal | None = None
                room = 0
                if state == 0:
                    states = []
                    for k in s.keys:
                        b = conn.execute("SELECT committed, reserved FROM buckets "
                                         "WHERE scope = ? AND bucket = ?",
                                         (k.scope, k.bucket)).fetchone()
                        states.append((k, *(b if b is not None else (0, 0))))
                    room = max(0, min(k.limit - c - r for k, c, r in states))
                    target = slice_target(amount, s.need, s.want, room, s.fraction)
                    if target is None:
                        k, c, r = next((k, c, r) for k, c, r in states
                                       if k.limit - c - r < s.need - amount)
                        refusal = Refusal(k.scope, k.bucket, k.limit, c, r)
                        target = amount
                    if target != amount:
                        conn.executemany("INSERT OR IGNORE INTO buckets (scope, bucket) VALUES (?, ?)",
                                         pairs)
                        conn.executemany(
                            "UPDATE buckets SET reserved = reserved + ? WHERE scope = ? AND bucket = ?",
                            [(target - amount, scope, bucket) for scope, bucket in pairs])
                        room -= max(target - amount, 0)
                        amount = target
                if state == 0 and s.close and amount == 0:
                    conn.execute("DELETE FROM reservations WHERE id = ?", (s.lease,))
                elif row is not None or state == 0:
                    conn.execute(
                        "UPDATE reservations SET amount = ?, spent = ?, excess = ?, rows_upto = ?, "
                        "expires_at = CASE WHEN state = 0 THEN ? ELSE expires_at END WHERE id = ?",
                        (amount, max(s.spent, spent), max(s.excess, excess), upto,
                         now + lease_s, s.lease))
                out.append(SliceState(amount=amount if state == 0 else 0,
                                      spent=max(s.spent, spent), excess=max(s.excess, excess),
                                      rows_upto=upto, room=max(room, 0), expired=state != 0,
                                      refusal=refusal))
        return out

    def has_expired(self, now: float, deadline: StoreDeadline | None = None) -> bool:
        with self._using("usage", deadline) as conn:
            return conn.execute("SELECT 1 FROM reservations WHERE state = 0 AND expires_at <= ? "
                                "LIMIT 1", (now,)).fetchone() is not None

    def reserve(self, rid: str, keys: Sequence[BucketKey], amount: int, now: float, expires_at: float,
                request_id: str, deadline: StoreDeadline | None = None) -> Refusal | None:
        """Reserve ``amount`` on every key, or nothing and return the first refusal."""
        with self._write("reserve", deadline) as conn:
            self._expire(conn, now)  # a dead process's leases never block for long
            for k in keys:
                row = conn.execute("SELECT committed, reserved FROM buckets "
                                   "WHERE scope = ? AND bucket = ?", (k.scope, k.bucket)).fetchone()
                committed, reserved = row if row is not None else (0, 0)
                if committed + reserved + amount > k.limit:
                    return Refusal(k.scope, k.bucket, k.limit, committed, reserved)  # commits expiry
            conn.executemany(
                "INSERT INTO buckets (scope, bucket, reserved) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, bucket) DO UPDATE SET reserved = reserved + excluded.reserved",
                [(k.scope, k.bucket, amount) for k in keys])
            conn.execute(
                "INSERT INTO reservations (id, amount, charges, request_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rid, amount, json.dumps([[k.scope, k.bucket] for k in keys]), request_id, now,
                 expires_at))
            return None

    def settle(self, rid: str, amount: int, ledger: tuple[Any, ...] | None = None,
               deadline: StoreDeadline | None = None) -> int:
        """Commit ``amount`` for reservation ``rid`` (open or expired) and drop it; returns the
        overspend. A reservation already settled or released commits nothing. ``ledger``: the
        attempt's row, inserted in the same transaction, only when this settle commits."""
        with self._write("settle", deadline) as conn:
            row = conn.execute("SELECT amount, charges, state FROM reservations WHERE id = ?",
                               (rid,)).fetchone()
            if row is None:
                return 0
            held, charges, state = row
            held_now = held if state == 0 else 0  # an expired lease holds nothing any more
            conn.executemany(
                "INSERT INTO buckets (scope, bucket, committed) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, bucket) DO UPDATE SET committed = committed + excluded.committed, "
                "reserved = reserved - ?",
                [(scope, bucket, amount, held_now) for scope, bucket in json.loads(charges)])
            conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))
            if ledger is not None:
                conn.execute(_INSERT_ROW, ledger)
            return max(amount - int(held), 0)

    def release(self, rid: str, deadline: StoreDeadline | None = None) -> None:
        with self._write("release", deadline) as conn:
            row = conn.execute("SELECT amount, charges, state FROM reservations WHERE id = ?",
                               (rid,)).fetchone()
            if row is None:
                return
            held, charges, state = row
            if state == 0:
                conn.executemany(
                    "UPDATE buckets SET reserved = reserved - ? WHERE scope = ? AND bucket = ?",
                    [(held, scope, bucket) for scope, bucket in json.loads(charges)])
            conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))

    def usage(self, keys: Sequence[tuple[str, str]], now: float,
              deadline: StoreDeadline | None = None) -> list[tuple[int, int]]:
        """(committed, reserved) of each bucket, from one snapshot; expired leases first."""
        if self.has_expired(now, deadline):
            self.reconcile(now, None, deadline)
        with self._using("usage", deadline) as conn:
            conn.execute("BEGIN")
            try:
                out = []
                for scope, bucket in keys:
                    row = conn.execute("SELECT committed, reserved FROM buckets "
                                       "WHERE scope = ? AND bucket = ?", (scope, bucket)).fetchone()
                    out.append((int(row[0]), int(row[1])) if row is not None else (0, 0))
            finally:
                conn.execute("COMMIT")
            return out

    def reconcile(self, now: float, retention_s: float | None,
                  deadline: StoreDeadline | None = None) -> int:
        """Expire leases past ``expires_at``; forget expired ones older than ``retention_s``."""
        with self._write("reconcile", deadline) as conn:
            n = self._expire(conn, now)
            if retention_s is not None:
                conn.execute("DELETE FROM reservations WHERE state = 1 AND expires_at <= ?",
                             (now - retention_s,))
            return n

    def audit(self) -> dict[str, Any]:
        """Consistency of the running totals: open leases, and any bucket whose ``reserved``
        differs from the sum of its open leases (there should be none)."""
        with self._using("audit") as conn:
            conn.execute("BEGIN")
            try:
                sums: dict[tuple[str, str], int] = {}
                n_open = 0
                for amount, charges in conn.execute(
                        "SELECT amount, charges FROM reservations WHERE state = 0"):
                    n_open += 1
                    for scope, bucket in json.loads(charges):
                        sums[(scope, bucket)] = sums.get((scope, bucket), 0) + amount
                wrong = []
                for scope, bucket, reserved in conn.execute(
                        "SELECT scope, bucket, reserved FROM buckets"):
                    if reserved != sums.get((scope, bucket), 0):
                        wrong.append((scope, bucket, reserved, sums.get((scope, bucket), 0)))
                n_expired = conn.execute(
                    "SELECT count(*) FROM reservations WHERE state = 1").fetchone()[0]
            finally:
                conn.execute("COMMIT")
        return {"open": n_open, "expired": n_expired, "mismatched": wrong}

    # --- ledger --------------------------------------------------------------------------

    def record(self, rows: Sequence[tuple[Any, ...]], deadline: StoreDeadline | None = None
               ) -> None:
        with self._write("record", deadline) as conn:
            conn.executemany(_INSERT_ROW, rows)

    def prune(self, before_us: int, batch: int | None = None) -> tuple[int, int]:
        """Delete the ledger rows with ``at < before_us``, oldest first, ``batch`` (default
        :data:`PRUNE_BATCH`) rows per ``BEGIN IMMEDIATE`` transaction (the write lock is held
        for one batch only, so settles and reservations interleave with a long prune). Returns
        ``(rows, cost_nanos)``, the rows deleted and the sum of their known costs. A file created with
        ``auto_vacuum = INCREMENTAL`` gives the freed pages back to the file system as it goes;
        an older file keeps them for new rows (its ``auto_vacuum`` is never changed)."""
        batch = batch or PRUNE_BATCH
        with self._using("prune") as conn:
            incremental = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL
        deleted = cost = 0
        while True:
            with self._write("prune") as conn:
                found = conn.execute("SELECT id, cost FROM ledger WHERE at < ? ORDER BY at LIMIT ?",
                                     (before_us, batch)).fetchall()
                conn.executemany("DELETE FROM ledger WHERE id = ?", [(i,) for i, _ in found])
            if found and incremental:
                with self._using("prune") as conn:
                    # A write transaction of its own. executescript steps the pragma to the end;
                    # execute() would free a single page.
                    self._busy_retry(conn, "PRAGMA incremental_vacuum;", self._until(None),
                                     script=True)
            deleted += len(found)
            cost += sum(c for _, c in found if c is not None)
            if len(found) < batch:
                return deleted, cost

    def rows(self, since_us: int | None, until_us: int | None) -> list[tuple[Any, ...]]:
        with self._using("rows") as conn:
            return conn.execute(
                f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE at >= ? AND at < ? ORDER BY at, id",
                (since_us if since_us is not None else -(2**63),
                 until_us if until_us is not None else 2**63 - 1)).fetchall()

    def summarize(self, by: str, since_us: int | None, until_us: int | None
                  ) -> list[tuple[Any, ...]]:
        """Totals per group of the rows with ``since_us <= at < until_us`` (see ``_SUMMARY``)."""
        key, join = _GROUP_KEYS[by]
        sql = _SUMMARY.format(key=key, join=join, attempt=_ATTEMPT, request=_REQUEST,
                              zeros=COST_ZEROS_SQL, unreported=UNREPORTED_SQL)
        with self._using("summarize") as conn:
            raw = conn.execute(
                sql, (since_us if since_us is not None else -(2**63),
                      until_us if until_us is not None else 2**63 - 1)).fetchall()
        return [(*head, None if usd is None else usd * 10**9 + nanos, zeros, unpriced, unreported)
                for *head, usd, nanos, zeros, unpriced, unreported in raw]
