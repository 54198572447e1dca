"""Connections to Redis: redis-py's asyncio client, or its blocking client driven from worker
threads (``redis.asyncio`` runs only on asyncio; under trio the blocking client is used).

Both offer one call, ``execute(*args, deadline=...)``: one command, one round trip, its
raw reply. Every call is bounded by a :class:`~squirrel_models.budget.StoreDeadline`: the
asyncio driver runs the command under ``anyio.fail_after`` (redis-py drops a connection whose
command was cancelled, so no half-read reply is reused); the threaded driver reads the reply
with ``read_response(timeout=...)`` of what is left, and the caller waits for its worker no
longer than that (a worker stuck in a connect is abandoned; its own ``connect_timeout_s``
ends it, and returns its connection). A command that fails because its pooled connection was lost (the server restarted)
is retried once on a fresh connection when time is left: every script of this plugin is
idempotent by id, so a retry never counts twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import attrs
import redis
import redis.asyncio
import redis.exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from squirrel_models.budget import StoreDeadline
from squirrel_models.forks import forget_in_child
from squirrel_models.secrets import Secret

__all__ = ["AsyncDriver", "Driver", "ThreadDriver", "make_driver"]

#: After a call's own time, how long the caller still waits for the answer before it gives up.
_GRACE_S = 0.05


class Driver(Protocol):
    async def open(self) -> None: ...
    async def execute(self, *args: Any, deadline: StoreDeadline) -> Any: ...
    async def close(self) -> None: ...


@attrs.define
class _Settings:
    url: Secret
    max_connections: int
    connect_timeout: float
    operation_timeout: float

    def pool_kwargs(self) -> dict[str, Any]:
        return {"max_connections": self.max_connections, "timeout": self.connect_timeout,
                "socket_connect_timeout": self.connect_timeout,
                "socket_timeout": self.operation_timeout, "health_check_interval": 0}


def _lost(exc: BaseException) -> bool:
    """A pooled connection found dead (not a timeout: that spent the call's time)."""
    return isinstance(exc, rx.ConnectionError) and not isinstance(exc, rx.AuthenticationError)


#: Clients a forked child inherited: their connections are the parent's sockets and its event
#: loop's (the child's first command raised RuntimeError "attached to a different loop"); the
#: child never uses nor closes them, and opens its own. (redis-py's blocking pool checks the
#: process id itself.)
_INHERITED: list[Any] = []


@attrs.define
class AsyncDriver:
    """redis-py's asyncio client on a blocking pool (asyncio only)."""

    settings: _Settings
    _client: redis.asyncio.Redis | None = None
    _reopen: bool = attrs.field(default=False, init=False)  # in a forked child: a client of its own

    def __attrs_post_init__(self) -> None:
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        if self._client is not None:
            _INHERITED.append(self._client)
            self._client, self._reopen = None, True

    async def open(self) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(self.settings.url.reveal(),
                                                             **self.settings.pool_kwargs())
        # No retries of redis-py's own (they would multiply a timeout); ours is below.
        self._client = redis.asyncio.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

    async def execute(self, *args: Any, deadline: StoreDeadline) -> Any:
        client = self._client
        if client is None and self._reopen:  # (open() awaits nothing: no other task comes between)
            self._reopen = False
            await self.open()
            client = self._client
        if client is None:
            raise rx.ConnectionError("the client is closed")
        for attempt in (0, 1):
            try:
                with anyio.fail_after(deadline.work() + _GRACE_S):
                    return await client.execute_command(*args)  # type: ignore[no-untyped-call]
            except rx.ConnectionError as exc:
                if attempt or not _lost(exc) or deadline.left() <= 0:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await client.connection_pool.disconnect()


@attrs.define
class ThreadDriver:
    """redis-py's blocking client, each command in a worker thread (any event loop)."""

    settings: _Settings
    _pool: redis.BlockingConnectionPool | None = None
    _limiter: anyio.CapacityLimiter | None = None

    async def open(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.settings.max_connections)
        self._pool = redis.BlockingConnectionPool.from_url(self.settings.url.reveal(),
                                                           **self.settings.pool_kwargs())

    def _once(self, pool: redis.BlockingConnectionPool, args: Sequence[Any],
              deadline: StoreDeadline) -> Any:
        conn = pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            conn.send_command(*args)
            # Disconnects on a timeout or error, so no half-read reply is reused. At most the
            # operation timeout, as the asyncio driver's socket timeout: the caller's deadline
            # (up to connect + operation timeout away) let one command take both.
            return conn.read_response(timeout=min(deadline.work(),
                                                  self.settings.operation_timeout))
        finally:
            pool.release(conn)  # type: ignore[no-untyped-call]

    def _run_sync(self, args: Sequence[Any], deadline: StoreDeadline) -> Any:
        pool = self._pool
        if pool is None:
            raise rx.ConnectionError("the client is closed")
        for attempt in (0, 1):
            try:
                return self._once(pool, args, deadline)
            except rx.ConnectionError as exc:
                if attempt or not _lost(exc) or deadline.left() <= 0:
                    raise
        raise AssertionError("unreachable")

    async def execute(self, *args: Any, deadline: StoreDeadline) -> Any:
        # A worker reading its reply stops by itself (read_response's timeout); the wait for
        # a free worker, or a connect to an unreachable host, is cut here: that worker is
        # abandoned and ends by its own connect_timeout_s.
        with anyio.move_on_after(deadline.work() + _GRACE_S):
            return await anyio.to_thread.run_sync(self._run_sync, args, deadline,
                                                  limiter=self._limiter, abandon_on_cancel=True)
        raise TimeoutError("no answer from a worker before the deadline")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await anyio.to_thread.run_sync(pool.disconnect)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def make_driver(kind: str, url: Secret, *, max_connections: int, connect_timeout: float,
                operation_timeout: float) -> AsyncDriver | ThreadDriver:
    """The driver for ``kind`` (``auto``: async under asyncio, threads otherwise)."""
    settings = _Settings(url, max_connections, connect_timeout, operation_timeout)
    if kind == "async" or (kind == "auto" and _on_asyncio()):
        return AsyncDriver(settings)
    return ThreadDriver(settings)


