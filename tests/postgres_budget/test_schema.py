"""Migrations: versioned, safe from several instances at once, and never on a foreign schema."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import psycopg
import pytest
from squirrel_models_postgres_budget import (
    SCHEMA_VERSION,
    PostgresBudgetBackend,
    UnusableDatabase,
)
from squirrel_models_postgres_budget.schema import MIGRATIONS, migrate

from .pgserver import PgServer

Make = Callable[..., PostgresBudgetBackend]

#: The first 16 hex digits of the SHA-256 of each released migration (its statements joined
#: by NUL): a database at version N never runs 1..N again, so an edited entry would leave
#: old and new databases different.
RELEASED = ("c639d9d746536463", "22635cd0ddd389b3", "9dfccaedb2fd14a6", "2e3882fc48170a92")


def test_released_migrations_are_never_edited() -> None:
    """The SQL is assembled from shared pieces (schema.py): what they produce stays the text
    each version was released with. A new version appends an entry (and its hash here)."""
    digests = [hashlib.sha256("\x00".join(m).encode()).hexdigest()[:16] for m in MIGRATIONS]
    assert tuple(digests[:len(RELEASED)]) == RELEASED


def test_concurrent_migrations_run_once(pg_server: PgServer, schema: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def one() -> None:
        try:
            with psycopg.connect(pg_server.url, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate(conn, schema))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == [SCHEMA_VERSION] * 6
    with psycopg.connect(pg_server.url) as conn:
        assert conn.execute(f"SELECT version FROM {schema}.meta").fetchone() == (SCHEMA_VERSION,)


def test_stepwise_migration(pg_server: PgServer, schema: str) -> None:
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        assert migrate(conn, schema, target=1) == 1
        assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.ledger",)).fetchone() == (None,)
        assert migrate(conn, schema) == SCHEMA_VERSION


@pytest.mark.anyio
async def test_foreign_schema_is_refused_untouched(pg_server: PgServer, schema: str,
                                                   make_backend: Make) -> None:
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.orders (id int)")
    with pytest.raises(UnusableDatabase, match="another application"):
        await make_backend().open()
    with psycopg.connect(pg_server.url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                              (schema,)).fetchall()
    assert tables == [("orders",)]


@pytest.mark.anyio
async def test_newer_schema_is_refused(pg_server: PgServer, schema: str, make_backend: Make) -> None:
    await make_backend().open()
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.meta SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(UnusableDatabase, match="newer") as info:
        await make_backend().open()
    assert info.value.field == "budget.options.schema"
