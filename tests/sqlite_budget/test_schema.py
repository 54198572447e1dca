"""Opening files: new, empty, foreign, corrupt, newer; migrations, whole or not at all."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from squirrel_models.budget import Charge, LedgerRow
from squirrel_models.errors import ConfigError
from squirrel_models_sqlite_budget import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SqliteBudgetBackend,
    UnusableDatabase,
    schema,
)

pytestmark = pytest.mark.anyio

Make = Callable[..., SqliteBudgetBackend]
GLOBAL = Charge("global", "total", "total", Decimal("1"))


def snapshot(path: str) -> tuple[bytes, int, list[str]]:
    return Path(path).read_bytes(), os.stat(path).st_mtime_ns, sorted(os.listdir(Path(path).parent))


def foreign_db(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def random_bytes(path: str) -> None:
    Path(path).write_bytes(random.Random(3).randbytes(8192))


def header_then_garbage(path: str) -> None:
    # Seeded, and with header bytes 18-19 saying "rollback journal": random bytes there said
    # "WAL" once in a few hundred runs, and SQLite then creates -shm/-wal beside even a
    # read-only open (the main file is still never written).
    garbage = bytearray(random.Random(7).randbytes(8192))
    garbage[18 - 16:20 - 16] = b"\x01\x01"
    Path(path).write_bytes(b"SQLite format 3\x00" + bytes(garbage))


def newer_db(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn, path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


@pytest.mark.parametrize(("make_file", "reason"), [
    (foreign_db, "another application's SQLite database"),
    (random_bytes, "not a SQLite database"),
    (header_then_garbage, "corrupt"),
    (newer_db, "newer than this plugin's"),
])
async def test_unusable_file_is_a_clear_error_and_left_untouched(
        make_backend: Make, db_path: str, make_file: Callable[[str], None], reason: str) -> None:
    make_file(db_path)
    before = snapshot(db_path)
    b = make_backend()
    with pytest.raises(UnusableDatabase) as info:
        await b.usage([GLOBAL])
    assert isinstance(info.value, ConfigError)
    assert info.value.path == db_path
    assert db_path in str(info.value) and reason in str(info.value)
    assert str(info.value).startswith("budget.options.path: ")
    assert snapshot(db_path) == before  # same bytes, same mtime, no -wal or -journal files


@pytest.mark.parametrize("make_path", [
    lambda p: os.mkfifo(p),
    lambda p: p.symlink_to("/dev/null"),
    lambda p: p.mkdir(),
], ids=["fifo", "dev-null", "folder"])
async def test_a_path_that_is_no_regular_file_is_a_clear_error(
        make_backend: Make, tmp_path: Path, make_path: Callable[[Path], None]) -> None:
    """A device or a pipe has no size, and was taken for a new file: SQLite then failed with
    "disk I/O error", a BudgetStoreError that named no field."""
    path = tmp_path / "budget.sqlite3"
    make_path(path)
    b = make_backend(path=str(path))
    with pytest.raises(UnusableDatabase, match="is not a regular file") as info:
        await b.usage([GLOBAL])
    assert str(info.value).startswith("budget.options.path: ")


async def test_unusable_file_fails_manager_start(squirrel_manager: Callable[..., object],
                                                 db_path: str) -> None:
    foreign_db(db_path)
    before = snapshot(db_path)
    mm = squirrel_manager({"budget": {"backend": "sqlite", "options": {"path": db_path}}})
    with pytest.raises(UnusableDatabase, match="customers"):
        async with mm:  # type: ignore[attr-defined]
            pass
    assert snapshot(db_path) == before


async def test_empty_file_and_new_folder_are_initialized(make_backend: Make, tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    for path in (empty, tmp_path / "new" / "folder" / "b.sqlite3"):
        b = make_backend(path=str(path))
        await b.usage([GLOBAL])
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


async def test_migrates_from_version_1_keeping_spend(make_backend: Make, db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    assert schema.migrate(conn, db_path, target=1) == 1
    conn.execute("INSERT INTO buckets (scope, bucket, committed, reserved) "
                 "VALUES ('global', 'total', 250000000, 0)")
    assert "ledger" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()

    b = make_backend()
    (u,) = await b.usage([GLOBAL])
    assert u.committed == Decimal("0.25")
    await b.record([LedgerRow("r1", 1, "p", "p/m", "ok", cost=Decimal("0.01"))])
    assert len(await b.rows()) == 1
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_failing_migration_leaves_the_previous_version(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    schema.migrate(conn, db_path, target=1)
    broken = (*schema.MIGRATIONS[:1], (*schema.MIGRATIONS[1], "CREATE TABLE oops (")
              )
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn, db_path, migrations=broken)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"buckets", "reservations"}  # no half-made ledger
    assert schema.migrate(conn, db_path) == SCHEMA_VERSION  # and the real one still applies
    conn.close()


def test_every_migration_is_one_step_of_the_version() -> None:
    assert len(schema.MIGRATIONS) == SCHEMA_VERSION >= 2
    for step in schema.MIGRATIONS:
        assert step and all(isinstance(s, str) and "PRAGMA user_version" not in s for s in step)
