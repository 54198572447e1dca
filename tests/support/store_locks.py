"""Budget stores held locked by someone else, for deadline tests: a SQLite file held under
``BEGIN EXCLUSIVE`` by another process, PostgreSQL rows held ``FOR UPDATE`` by another
connection, and a whole server hung (SIGSTOP: Redis, PostgreSQL). All are real locks on the
real store; nothing is mocked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import attrs
from squirrel_models.testing import ScriptedProvider
from squirrel_models.types import AIRequest, ModelCard, ProviderResponse, StreamChunk

__all__ = ["Freeze", "LockingProvider", "PgLocker", "SqliteLocker"]


class Locker(Protocol):
    async def lock(self) -> None: ...


class Pausable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Freeze:
    """Hangs a test's server (its ``pause``: SIGSTOP) on :meth:`lock`, once, and resumes it
    on :meth:`unlock`: the kernel still accepts connections and takes what is sent, nothing
    answers, so only the client's own bounds can end a wait."""

    def __init__(self, server: Pausable) -> None:
        self.server, self.paused = server, False

    async def lock(self) -> None:
        if not self.paused:
            self.server.pause()
            self.paused = True

    async def unlock(self) -> None:
        if self.paused:
            self.server.resume()
            self.paused = False


@attrs.define
class LockingProvider(ScriptedProvider):
    """A scripted provider whose every call first has ``locker`` lock the budget store: the
    reservation is made, then the store is locked, then the upstream answers (or fails)."""

    locker: Locker | None = None

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        assert self.locker is not None
        await self.locker.lock()
        return await super().complete(model, request)

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        assert self.locker is not None
        await self.locker.lock()
        async for chunk in super().stream(model, request):
            yield chunk

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # hold the lock until told to let go (or the test process is gone)
conn.execute("COMMIT")
print("unlocked", flush=True)
"""


class SqliteLocker:
    """Another process that takes the write lock of the SQLite file ``path`` (``BEGIN
    EXCLUSIVE``) on :meth:`lock` and holds it until :meth:`unlock` (or :meth:`close`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proc: subprocess.Popen[str] | None = None
        self.locks = 0

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _LOCKER, self.path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    async def lock(self) -> None:
        assert self._proc is None, "already locked"
        proc = await anyio.to_thread.run_sync(self._start)
        self._proc = proc
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "locked", line
        self.locks += 1

    async def unlock(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        await anyio.to_thread.run_sync(proc.wait, 10)
        proc.stdin.close()
        proc.stdout.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def __enter__(self) -> SqliteLocker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PgLocker:
    """Another PostgreSQL connection that runs ``sql`` (``SELECT ... FOR UPDATE``, ``LOCK
    TABLE``) in a transaction on :meth:`lock` and holds its locks until :meth:`unlock`."""

    def __init__(self, url: str, sql: str) -> None:
        self.url, self.sql = url, sql
        self._conn: Any = None
        self.locks = 0

    async def lock(self) -> None:
        import psycopg

        assert self._conn is None, "already locked"
        self._conn = await anyio.to_thread.run_sync(psycopg.connect, self.url)
        await anyio.to_thread.run_sync(self._conn.execute, self.sql)
        self.locks += 1

    async def unlock(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.rollback)
            await anyio.to_thread.run_sync(conn.close)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> PgLocker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
