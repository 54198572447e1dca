"""Connection pools behind the backend: psycopg's asyncio pool, or its blocking pool driven from
worker threads (psycopg's async API runs only on asyncio; under trio the blocking pool is used).

Both offer the same two calls, ``fetch`` and ``executemany``, each on a pooled connection in
autocommit mode. A call that fails because its connection was lost (the server restarted and
the pool still held the old connection) is retried once on a fresh connection after the pool
checks its idle ones; every budget operation is idempotent by reservation id, so a retry never
counts twice. Deadlocks and serialization failures (not expected: locks are ordered) are
retried once too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import attrs
import psycopg
import psycopg.errors
import psycopg_pool
from squirrel_models.secrets import Secret

from .errors import is_connection_loss

__all__ = ["AsyncDriver", "Driver", "ThreadDriver", "make_driver"]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
_RETRY_STATES = ("40P01", "40001")  # deadlock detected, serialization failure


def _retryable(exc: psycopg.Error) -> bool:
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return False  # waiting again would double the wait; closed stays closed
    return is_connection_loss(exc) or exc.sqlstate in _RETRY_STATES


class Driver(Protocol):
    async def open(self) -> None: ...
    async def fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def close(self) -> None: ...


@attrs.define
class _Settings:
    conninfo: Secret
    min_size: int
    max_size: int
    timeout: float
    answer_timeout: float
    name: str = "squirrel-budget"


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

    async def _run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise psycopg_pool.PoolClosed("the pool is not open")
        for attempt in (0, 1):
            try:
                with anyio.fail_after(self.settings.answer_timeout):
                    async with pool.connection() as conn:
                        return await fn(conn)
            except psycopg.Error as exc:
                if attempt or not _retryable(exc):
                    raise
                if is_connection_loss(exc):
                    await pool.check()
        raise AssertionError("unreachable")

    async def fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        async def go(conn: psycopg.AsyncConnection[Any]) -> Rows:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
        return await self._run(go)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(sql, rows)
        await self._run(go)

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

    def _run_sync(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        pool = self._pool
        if pool is None:
            raise psycopg_pool.PoolClosed("the pool is not open")
        for attempt in (0, 1):
            try:
                with pool.connection() as conn:
                    return fn(conn)
            except psycopg.Error as exc:
                if attempt or not _retryable(exc):
                    raise
                if is_connection_loss(exc):
                    pool.check()
        raise AssertionError("unreachable")

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        # Not abandoned on cancellation: the thread finishes its one statement first.
        return await anyio.to_thread.run_sync(self._run_sync, fn, limiter=self._limiter)

    async def fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        def go(conn: psycopg.Connection[Any]) -> Rows:
            return conn.execute(sql, params).fetchall()
        return await self._run(go)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def go(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        await self._run(go)

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
                answer_timeout: float) -> AsyncDriver | ThreadDriver:
    """The driver for ``kind`` (``auto``: async under asyncio, threads otherwise)."""
    settings = _Settings(conninfo, min_size, max_size, timeout, answer_timeout)
    if kind == "async" or (kind == "auto" and _on_asyncio()):
        return AsyncDriver(settings)
    return ThreadDriver(settings)
