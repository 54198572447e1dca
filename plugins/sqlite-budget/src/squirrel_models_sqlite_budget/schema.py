"""The database schema, its migrations, and opening a file safely.

The file is identified by ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and versioned by
``PRAGMA user_version``. Each migration runs in one ``BEGIN IMMEDIATE`` transaction together
with the ``user_version`` bump, so a database is at version N or N+1, never in between (SQLite
DDL is transactional). Before anything is written, the file is inspected through a read-only
connection: random bytes, a corrupt file, someone else's SQLite database or a newer schema
raise :class:`~squirrel_models_sqlite_budget.errors.UnusableDatabase` and leave it untouched.

Money is stored as integer nano-USD (1e-9 USD).
"""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import UnusableDatabase

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "connect", "open_database"]

#: "SqBg": marks a file as a squirrel-models budget database.
APPLICATION_ID = 0x53714267
HEADER = b"SQLite format 3\x00"

# Each entry migrates from version i to i + 1. Never edit a released entry: append one.
MIGRATIONS: tuple[Sequence[str], ...] = (
    # 1: budgets. Buckets keep running totals; reservations are leases (state 0 open,
    # 1 expired: its headroom is back, a late settle still commits once).
    (
        """CREATE TABLE buckets (
               scope TEXT NOT NULL,
               bucket TEXT NOT NULL,
               committed INTEGER NOT NULL DEFAULT 0,
               reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
               PRIMARY KEY (scope, bucket)) WITHOUT ROWID""",
        """CREATE TABLE reservations (
               id TEXT PRIMARY KEY,
               amount INTEGER NOT NULL CHECK (amount >= 0),
               charges TEXT NOT NULL,
               request_id TEXT NOT NULL DEFAULT '',
               created_at REAL NOT NULL,
               expires_at REAL NOT NULL,
               state INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
        "CREATE INDEX reservations_open_by_expiry ON reservations (expires_at) WHERE state = 0",
        "CREATE INDEX reservations_expired ON reservations (expires_at) WHERE state = 1",
    ),
    # 2: the usage ledger, one row per attempt. Time in integer microseconds since the epoch
    # (UTC), cost in nano-USD (NULL: unknown price), scopes as a JSON array.
    (
        """CREATE TABLE ledger (
               id INTEGER PRIMARY KEY,
               at INTEGER NOT NULL,
               request_id TEXT NOT NULL,
               attempt INTEGER NOT NULL,
               provider TEXT NOT NULL,
               model TEXT NOT NULL,
               outcome TEXT NOT NULL,
               input_tokens INTEGER NOT NULL,
               output_tokens INTEGER NOT NULL,
               cached_tokens INTEGER NOT NULL,
               reasoning_tokens INTEGER NOT NULL,
               cost INTEGER,
               error_type TEXT,
               latency_s REAL NOT NULL,
               scopes TEXT NOT NULL,
               usage_source TEXT NOT NULL)""",
        "CREATE INDEX ledger_by_time ON ledger (at)",
    ),
    # 3: leased slices (squirrel_models.slices). A slice is a lease (``slice = 1``) whose room
    # a process serves reservations from in memory: ``spent`` and ``excess`` are the
    # cumulative amounts settled through it within and beyond its room, ``rows_upto`` the
    # number of the last ledger row written for it (so a repeated flush writes nothing twice),
    # and ``charge_row`` the ledger row that charged it in full when it expired.
    (
        "ALTER TABLE reservations ADD COLUMN slice INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE reservations ADD COLUMN spent INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE reservations ADD COLUMN excess INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE reservations ADD COLUMN rows_upto INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE reservations ADD COLUMN charge_row INTEGER",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str, *, busy_timeout_s: float, synchronous: str,
            read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``)."""
    if read_only:
        uri = Path(path).absolute().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    return conn


def _inspect(path: str, busy_timeout_s: float) -> int | None:
    """The schema version of an existing budget database, None for a new or empty file;
    raises UnusableDatabase for anything else. Reads only."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnusableDatabase(path, f"cannot read it: {exc.strerror}") from None
    # Before the size: a device or a pipe (/dev/null, a FIFO) has none, and was taken for a
    # new file, then failed as SQLite's "disk I/O error" not naming the field.
    if not stat.S_ISREG(st.st_mode):
        raise UnusableDatabase(path, "is not a regular file")
    if st.st_size == 0:
        return None
    try:
        with p.open("rb") as f:
            head = f.read(len(HEADER))
    except OSError as exc:
        raise UnusableDatabase(path, f"cannot read it: {exc.strerror}") from None
    if head != HEADER:
        raise UnusableDatabase(path, "is not a SQLite database (bad header)")
    try:
        conn = connect(path, busy_timeout_s=busy_timeout_s, synchronous="FULL", read_only=True)
        try:
            conn.execute("BEGIN")  # one snapshot: another process may be creating the file
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise UnusableDatabase(path, f"is corrupt or unreadable ({exc})") from None
    return _check(path, app_id, version, tables)


def _check(path: str, app_id: int, version: int, tables: Sequence[str]) -> int | None:
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise UnusableDatabase(
                path, f"has schema version {version}, newer than this plugin's {SCHEMA_VERSION}; "
                "upgrade squirrel-models-sqlite-budget")
        return version
    if app_id == 0 and not tables and version == 0:
        return None  # an empty SQLite database: ours to initialize
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    raise UnusableDatabase(
        path, f"is another application's SQLite database (application_id {app_id:#x}, "
        f"tables: {shown or 'none'}), not a squirrel-models budget database")


def _set_wal(conn: sqlite3.Connection, deadline: float) -> None:
    # Switching the journal mode needs a moment of exclusive access; another process opening
    # the same new file may hold it, and this pragma does not always wait on the busy handler.
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode is {mode})")
        return


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION,
            migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply the missing migrations up to ``target``, each in its own transaction.

    Safe against other processes doing the same: each step re-reads the version after taking
    the write lock. Returns the resulting version.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
                _check(path, app_id, version, tables)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            elif version > SCHEMA_VERSION:
                _check(path, app_id, version, ())
            if version >= target:
                conn.execute("COMMIT")
                return int(version)
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def open_database(path: str, *, busy_timeout_s: float, synchronous: str) -> sqlite3.Connection:
    """Check ``path`` without writing, then open it read-write in WAL mode and migrate it (a
    new file gets ``auto_vacuum = INCREMENTAL``)."""
    new = _inspect(path, busy_timeout_s) is None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, busy_timeout_s=busy_timeout_s, synchronous=synchronous)
    try:
        if new:
            # Before the first table, so a pruned ledger can give pages back (incremental
            # vacuum); a no-op on a file another process initialized meanwhile, and never
            # applied to an existing file (changing it there needs a full VACUUM).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        _set_wal(conn, time.monotonic() + busy_timeout_s)
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn
