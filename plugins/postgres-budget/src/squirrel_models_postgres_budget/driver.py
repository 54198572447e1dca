"""Connection pools behind the backend: psycopg's asyncio pool, or its blocking pool driven from
worker threads (psycopg's async API runs only on asyncio; under trio the blocking pool is used).

Both offer the same two calls, ``fetch`` and ``executemany``, each on a pooled connection in
autocommit mode. A call that fails because its connection was lost (the server restarted and
the pool still held the old connection) is retried once on a fresh connection after the pool
checks its idle ones; every budget operation is idempotent by reservation id, so a retry never
counts twice. Deadlocks and serialization failures (not expected: locks are ordered) are
retried once too.

A call may carry a :class:`~squirrel_models.budget.StoreDeadline`: the wait for a pooled
connection (and, with threads, for a worker) is cut to what is left of it, and the statement
runs under a ``statement_timeout`` of what is left then (at most ``operation_timeout_s``),
sent in the same round trip (pipeline mode). The server itself stops the statement, releasing
its row locks, so the call (and a worker thread running it) returns by the deadline with
``QueryCanceled``. Every call sets its own ``statement_timeout``: a pooled connection never
keeps a shorter one from an earlier call.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import attrs
import psycopg
import psycopg.errors
import psycopg_pool
from squirrel_models.budget import StoreDeadline
from squirrel_models.secrets import Secret

from .errors import is_connection_loss

__all__ = ["AsyncDriver", "Driver", "ThreadDriver", "make_driver"]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
_RETRY_STATES = ("40P01", "40001")  # deadlock detected, serialization failure
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
#: After a statement's own timeout, how long the client still waits for the server's answer
#: (the cancellation) before it gives the connection up.
_ANSWER_GRACE_S = 0.25


def _retryable(exc: psycopg.Error) -> bool:
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return False  # waiting again would double the wait; closed stays closed
    return is_connection_loss(exc) or exc.sqlstate in _RETRY_STATES


class Driver(Protocol):
    async def open(self) -> None: ...
    async def fetch(self, sql: str, params: Sequence[Any],
                    deadline: StoreDeadline | None = None) -> Rows: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None) -> None: ...
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


@attrs.define
class AsyncDriver:
    """psycopg's ``AsyncConnectionPool`` (asyncio only)."""

    settings: _Settings
    _pool: psycopg_pool.AsyncConnectionPool | None = None

    async def open(self) -> None:
        s = self.settings
        self._pool = psycopg_pool.AsyncConnectionPool(
            s.conninfo.reveal(), min_size=s.min_size, max_size=s.max_size, open=False,
            timeout=s.timeout, name=s.name, kwargs={"autocommit": True})
        await self._pool.open(wait=False)

    async def _run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
                   deadline: StoreDeadline | None) -> T:
        pool = self._pool
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

    async def fetch(self, sql: str, params: Sequence[Any],
                    deadline: StoreDeadline | None = None) -> Rows:
        async def go(conn: psycopg.AsyncConnection[Any]) -> Rows:
            async with conn.pipeline():
                await conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
                cur = await conn.execute(sql, params)
                return await cur.fetchall()
        return await self._run(go, deadline)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None) -> None:
        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(sql, rows)
        await self._run(go, deadline)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


@attrs.define
class ThreadDriver:
    """psycopg's blocking ``ConnectionPool``, each call in a worker thread (any event loop)."""

    settings: _Settings
    _pool: psycopg_pool.ConnectionPool | None = None
    _limiter: anyio.CapacityLimiter | None = None

    async def open(self) -> None:
        s = self.settings
        self._limiter = anyio.CapacityLimiter(s.max_size)
        self._pool = psycopg_pool.ConnectionPool(
            s.conninfo.reveal(), min_size=s.min_size, max_size=s.max_size, open=False,
            timeout=s.timeout, name=s.name, kwargs={"autocommit": True})
        await anyio.to_thread.run_sync(functools.partial(self._pool.open, wait=False))

    def _run_sync(self, fn: Callable[[psycopg.Connection[Any]], T],
                  deadline: StoreDeadline | None) -> T:
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

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T],
                   deadline: StoreDeadline | None) -> T:
        # A running thread is not abandoned on cancellation: it finishes its one statement,
        # which its statement_timeout ends by the deadline. Only the wait for a free worker
        # (all of them busy) is cut here.
        with anyio.move_on_after(math.inf if deadline is None else deadline.queue()):
            return await anyio.to_thread.run_sync(self._run_sync, fn, deadline,
                                                  limiter=self._limiter)
        raise psycopg_pool.PoolTimeout("no free connection worker before the deadline")

    async def fetch(self, sql: str, params: Sequence[Any],
                    deadline: StoreDeadline | None = None) -> Rows:
        def go(conn: psycopg.Connection[Any]) -> Rows:
            with conn.pipeline():
                conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
                return conn.execute(sql, params).fetchall()
        return await self._run(go, deadline)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]],
                          deadline: StoreDeadline | None = None) -> None:
        def go(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_SET_TIMEOUT, (self.settings.statement_ms(deadline),))
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        await self._run(go, deadline)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)


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
