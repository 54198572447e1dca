"""Errors of the SQLite budget backend, and the one helper that maps ``sqlite3`` errors.

::

    SquirrelError
    ├── ConfigError
    │   └── UnusableDatabase     the file is not a squirrel budget database, is corrupt, or
    │                            was written by a newer schema; it was not modified
    └── BudgetStoreError         an operation on a healthy file failed (locked past the busy
                                 timeout, disk full, I/O error)

Both carry ``path``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from squirrel_models.errors import ConfigError, SquirrelError

__all__ = ["BudgetStoreError", "UnusableDatabase", "map_sqlite_errors"]


class UnusableDatabase(ConfigError):
    """``path`` cannot be used as a budget database; the file was left untouched."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}; the file was not modified", field="budget.options.path")


class BudgetStoreError(SquirrelError):
    """A budget operation on ``path`` failed in SQLite (``operation`` names which)."""

    def __init__(self, path: str, operation: str, detail: str) -> None:
        self.path, self.operation, self.detail = path, operation, detail
        super().__init__(f"budget database {path}: {operation} failed: {detail}")


@contextmanager
def map_sqlite_errors(path: str, operation: str) -> Iterator[None]:
    """Translate ``sqlite3`` errors raised inside the block into :class:`BudgetStoreError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BudgetStoreError(path, operation, f"{type(exc).__name__}: {exc}") from exc
