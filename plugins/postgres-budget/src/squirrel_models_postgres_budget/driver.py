"""Connection pools behind the backend: psycopg's asyncio pool, or its blocking pool driven from
worker threads (psycopg's async API runs only on asyncio; under trio the blocking pool is used).

Both offer the same two calls, ``fetch`` and ``executemany``, each on a pooled connection in
autocommit mode. A call that fails because its connection was lost (the server restarted and
the pool still held the old connection) is retried once on a fresh connection after the pool
checks its idle ones; every budget operation is idempotent by reservation id, so a retry never
counts twice. Deadlocks and serialization failures (not expected: locks are ordered) are
retried once too.

A call may carry a :class:`~squirrel_models.budget.StoreDeadline`: the statement runs under a
``statement_timeout`` of what is left of it (at most ``operation_timeout_s``), so the server
itself stops a statement stuck on a locked row, releasing its row locks, with
``QueryCanceled``. Every call sets its own ``statement_timeout``: a pooled connection never
keeps a shorter one from an earlier call.

The setting and the statement go in one message of the simple query protocol (parameters bound
by psycopg on the client, :class:`psycopg.ClientCursor`): the server runs and commits the
whole call without waiting for anything more from this process. Sent as a pipeline (the
statement, then the transaction's end after its answer), a call left its transaction open at
the server between the two; a process stopped there (SIGSTOP, a paused VM, a long swap) kept
the bucket rows locked for as long as it stayed stopped, since no server timeout covers a
transaction that waits for the rest of a pipeline: every other process's reserve on those
buckets timed out, and its expired slice could not be charged. (PostgreSQL 13 and later apply
the ``statement_timeout`` set by the first statement of such a message to the next; older
servers keep the session's, ``operation_timeout_s``.)

The wait for a pooled connection cannot be cut like that: its holders are other calls of this
process, each bounded, and a settlement that gave up its place in the queue would lose its
spend until the lease expires. So the call waits for a connection up to ``connect_timeout_s``
(at least :data:`~squirrel_models.budget.QUEUE_MIN_S` past the deadline, within it) but its
*caller* does not: every call runs in a worker thread (the threaded driver) or an asyncio task
(the asyncio driver) of :class:`squirrel_models.storethreads.StoreThreads`, which waits for it
until the caller's deadline (plus ``WAIT_MARGIN_S``) and then raises the backend's
``BudgetStoreTimeout`` with ``pending`` set, leaving the call to end in the background: a
settlement still commits with its ledger row, a reservation made after its caller left is
released at once (``undo``), and later calls run after it (they read what it wrote).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import attrs
import psycopg
import psycopg.errors
import psycopg_pool
from squirrel_models.budget import StoreDeadline
from squirrel_models.forks import forget_in_child
from squirrel_models.secrets import Secret
from squirrel_models.storethreads import StoreThreads

from .errors import is_connection_loss

__all__ = ["AsyncDriver", "Driver", "Rows", "ThreadDriver", "Undo", "make_driver"]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
#: What undoes a call's effect when it ended after its caller left: the statement to run (and
#: its parameters), or None when there is nothing to undo (a refused reservation).
Undo = Callable[[Rows], "tuple[str, Sequence[Any]] | None"]
Late = Callable[[], BaseException]
_RETRY_STATES = ("40P01", "40001")  # deadlock detected, serialization failure
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
#: A call's message: its ``statement_timeout``, then its statement (see the module docstring).
_CALL = _SET_TIMEOUT + "; "
#: After a statement's own timeout, how long the client still waits for the server's answer
#: (the cancellation) before it gives the connection up.
_ANSWER_GRACE_S = 0.25


def _retryable(exc: psycopg.Error) -> bool:
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return False  # waiting again would double the wait; closed stays closed
    return is_connection_loss(exc) or exc.sqlstate in _RETRY_STATES


class Driver(Protocol):
    async def open(self) -> None: ...
    async def fetch(self, sql: str, params: Sequence[Any], deadline: StoreDeadline | None = None,
                    *, late: Late | None = None, undo: Undo | None = None,
                    what: str = "call") -> Rows: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None, *, late: Late | None = None,
                          what: str = "call") -> None: ...
    async def close(self) -> None: ...


@attrs.define
class _Settings:
    conninfo: Secret
    min_size: int
    max_size: int
    timeout: float
    answer_timeout: float
    statement_timeout: float
    name: str = "squirrel-budget"

    def pool_wait(self, deadline: StoreDeadline | None) -> float:
        """How long to wait for a pooled connection."""
        return self.timeout if deadline is None else min(self.timeout, deadline.queue())

    def statement_ms(self, deadline: StoreDeadline | None) -> str:
        """The ``statement_timeout`` of the next statement, in ms (never 0: that is none)."""
        left = self.statement_timeout if deadline is None else min(self.statement_timeout,
                                                                   deadline.work())
        return str(max(1, int(left * 1000)))

    def answer_wait(self, deadline: StoreDeadline | None) -> float:
        """The client's own bound on a call: a connection, then the statement's own timeout
        and the server's answer to it."""
        if deadline is None:
            return self.answer_timeout
        return min(self.answer_timeout, deadline.queue() + deadline.work() + _ANSWER_GRACE_S)

    def own_deadline(self) -> StoreDeadline:
        """The bound of an undo run in the background: the backend's own timeouts."""
        seconds = self.timeout + self.statement_timeout
        return StoreDeadline(time.monotonic() + seconds, seconds, False)


# The statement's timeout is what is left once the connection is there, not when the call
# was made: it may have waited for the pool meanwhile.


def _fetch_async(sql: str, params: Sequence[Any], s: _Settings, deadline: StoreDeadline | None
                 ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[Rows]]:
    async def go(conn: psycopg.AsyncConnection[Any]) -> Rows:
        async with psycopg.AsyncClientCursor(conn) as cur:
            await cur.execute(_CALL + sql, (s.statement_ms(deadline), *params))
            cur.nextset()  # past set_config's row
            return await cur.fetchall()
    return go


def _fetch_sync(sql: str, params: Sequence[Any], s: _Settings, deadline: StoreDeadline | None
                ) -> Callable[[psycopg.Connection[Any]], Rows]:
    def go(conn: psycopg.Connection[Any]) -> Rows:
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(_CALL + sql, (s.statement_ms(deadline), *params))
            cur.nextset()  # past set_config's row
            return cur.fetchall()
    return go


#: Pools a forked child inherited: their connections are the parent's sockets (used by both,
#: one process read the other's answers), so the child never uses nor closes them (closing
#: would end the parent's sessions) and opens a pool of its own.
_INHERITED: list[Any] = []


@attrs.define
class AsyncDriver:
    """psycopg's ``AsyncConnectionPool`` (asyncio only)."""

    settings: _Settings
    _pool: psycopg_pool.AsyncConnectionPool | None = None
    _calls: StoreThreads = attrs.field(factory=lambda: StoreThreads("squirrel-postgres-budget"))
    _reopen: bool = attrs.field(default=False, init=False)  # in a forked child: a pool of its own
    _reopen_lock: anyio.Lock | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        if self._pool is not None:
            _INHERITED.append(self._pool)
            self._pool, self._reopen, self._reopen_lock = None, True, None

    async def _reopened(self) -> psycopg_pool.AsyncConnectionPool | None:
        if self._reopen_lock is None:
            self._reopen_lock = anyio.Lock()
        async with self._reopen_lock:
            if self._pool is None and self._reopen:
                await self.open()
            self._reopen = False
        return self._pool

    async def open(self) -> None:
        s = self.settings
        self._pool = psycopg_pool.AsyncConnectionPool(
            s.conninfo.reveal(), min_size=s.min_size, max_size=s.max_size, open=False,
            timeout=s.timeout, name=s.name, kwargs={"autocommit": True})
        await self._pool.open(wait=False)

    async def _run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
                   deadline: StoreDeadline | None) -> T:
        pool = self._pool
        if pool is None and self._reopen:
            pool = await self._reopened()
        if pool is None:
            raise psycopg_pool.PoolClosed("the pool is not open")
        s = self.settings
        for attempt in (0, 1):
            try:
                with anyio.fail_after(s.answer_wait(deadline)):
                    async with pool.connection(timeout=s.pool_wait(deadline)) as conn:
                        return await fn(conn)
            except psycopg.Error as exc:
                if attempt or not _retryable(exc):
                    raise
                if is_connection_loss(exc):
                    await pool.check()
        raise AssertionError("unreachable")

    async def _call(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
                    deadline: StoreDeadline | None, late: Late | None,
                    undo: Callable[[T], Awaitable[object]] | None, what: str) -> T:
        """``fn`` on a pooled connection, in a task of its own waited for no longer than the
        caller's deadline (see the module docstring)."""
        return await self._calls.run_task(self._run, fn, deadline, deadline=deadline,
                                          timeout_error=late, undo=undo, what=what)

    async def fetch(self, sql: str, params: Sequence[Any], deadline: StoreDeadline | None = None,
                    *, late: Late | None = None, undo: Undo | None = None,
                    what: str = "call") -> Rows:
        s = self.settings

        async def undo_rows(rows: Rows) -> None:
            statement = None if undo is None else undo(rows)
            if statement is not None:
                own = s.own_deadline()
                await self._run(_fetch_async(*statement, s, own), own)

        return await self._call(_fetch_async(sql, params, s, deadline), deadline,
                                late, None if undo is None else undo_rows, what)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None, *, late: Late | None = None,
                          what: str = "call") -> None:
        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(sql, rows)
        await self._call(go, deadline, late, None, what)

    async def close(self) -> None:
        """Close the pool once the calls left in the background have ended (each bounded)."""
        await self._calls.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


@attrs.define
class ThreadDriver:
    """psycopg's blocking ``ConnectionPool``, each call in a worker thread (any event loop)."""

    settings: _Settings
    _pool: psycopg_pool.ConnectionPool | None = None
    _calls: StoreThreads | None = None
    _reopen: bool = attrs.field(default=False, init=False)  # in a forked child: a pool of its own
    _reopen_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        if self._pool is not None:
            _INHERITED.append(self._pool)
            self._pool, self._reopen, self._reopen_lock = None, True, threading.Lock()

    def _new_pool(self) -> psycopg_pool.ConnectionPool:
        s = self.settings
        return psycopg_pool.ConnectionPool(
            s.conninfo.reveal(), min_size=s.min_size, max_size=s.max_size, open=False,
            timeout=s.timeout, name=s.name, kwargs={"autocommit": True})

    async def open(self) -> None:
        # One thread per connection: more would only wait for the pool.
        self._calls = StoreThreads("squirrel-postgres-budget", self.settings.max_size)
        self._pool = self._new_pool()
        await anyio.to_thread.run_sync(functools.partial(self._pool.open, wait=False))

    def _run_sync(self, fn: Callable[[psycopg.Connection[Any]], T],
                  deadline: StoreDeadline | None) -> T:
        pool = self._pool
        if pool is None and self._reopen:
            with self._reopen_lock:
                if self._pool is None and self._reopen:
                    pool = self._new_pool()
                    pool.open(wait=False)
                    self._pool = pool
                self._reopen = False
                pool = self._pool
        if pool is None:
            raise psycopg_pool.PoolClosed("the pool is not open")
        for attempt in (0, 1):
            try:
                with pool.connection(timeout=self.settings.pool_wait(deadline)) as conn:
                    return fn(conn)
            except psycopg.Error as exc:
                if attempt or not _retryable(exc):
                    raise
                if is_connection_loss(exc):
                    pool.check()
        raise AssertionError("unreachable")

    async def _call(self, fn: Callable[[psycopg.Connection[Any]], T],
                    deadline: StoreDeadline | None, late: Late | None,
                    undo: Callable[[T], object] | None, what: str) -> T:
        """``fn`` on a pooled connection in a worker thread, waited for no longer than the
        caller's deadline (see the module docstring). A running thread cannot be stopped: it
        ends by its own bounds (the pool's wait, the statement's timeout)."""
        if self._calls is None:
            raise psycopg_pool.PoolClosed("the pool is not open")
        return await self._calls.run(self._run_sync, fn, deadline, deadline=deadline,
                                     timeout_error=late, undo=undo, what=what)

    async def fetch(self, sql: str, params: Sequence[Any], deadline: StoreDeadline | None = None,
                    *, late: Late | None = None, undo: Undo | None = None,
                    what: str = "call") -> Rows:
        s = self.settings

        def undo_rows(rows: Rows) -> None:  # in the worker thread
            statement = None if undo is None else undo(rows)
            if statement is not None:
                own = s.own_deadline()
                self._run_sync(_fetch_sync(*statement, s, own), own)

        return await self._call(_fetch_sync(sql, params, s, deadline), deadline,
                                late, None if undo is None else undo_rows, what)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None, *, late: Late | None = None,
                          what: str = "call") -> None:
        def go(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        await self._call(go, deadline, late, None, what)

    async def close(self) -> None:
        """Close the pool once every call has ended, those left in the background too (each
        bounded)."""
        calls, self._calls = self._calls, None  # no new calls; those running keep the pool

        def close() -> None:
            if calls is not None:
                calls.shutdown(wait=True)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def make_driver(kind: str, conninfo: Secret, *, min_size: int, max_size: int, timeout: float,
                answer_timeout: float, statement_timeout: float) -> AsyncDriver | ThreadDriver:
    """The driver for ``kind`` (``auto``: async under asyncio, threads otherwise)."""
    settings = _Settings(conninfo, min_size, max_size, timeout, answer_timeout, statement_timeout)
    if kind == "async" or (kind == "auto" and _on_asyncio()):
        return AsyncDriver(settings)
    return ThreadDriver(settings)
