"""Errors of the SQLite budget backend, and the one helper that maps ``sqlite3`` errors.

::

    SquirrelError
    ├── ConfigError
    │   └── UnusableDatabase     the file is not a squirrel budget database, is corrupt, or
    │                            was written by a newer schema; it was not modified
    └── squirrel_models.BudgetStoreError
        └── BudgetStoreError     an operation on a healthy file failed (disk full, I/O error)
            └── BudgetStoreTimeout   the file stayed locked (or the call ran) past the time
                                     the operation had: the request's deadline, the cleanup
                                     bound, or ``busy_timeout_s`` (also a
                                     ``squirrel_models.BudgetStoreTimeout``)

Both store errors carry ``path`` and ``operation``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from squirrel_models import errors as core
from squirrel_models.budget import STORE_MIN_S, StoreDeadline
from squirrel_models.errors import ConfigError

__all__ = ["BudgetStoreError", "BudgetStoreTimeout", "UnusableDatabase", "map_sqlite_errors"]

# Primary result codes that mean "not now": another connection holds the lock, or our
# progress handler stopped the statement at its deadline.
_TIMED_OUT = (5, 6, 9)  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_INTERRUPT


class UnusableDatabase(ConfigError):
    """``path`` cannot be used as a budget database; the file was left untouched."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}; the file was not modified", field="budget.options.path")


class BudgetStoreError(core.BudgetStoreError):
    """A budget operation on ``path`` failed in SQLite (``operation`` names which)."""

    def __init__(self, path: str, operation: str, detail: str, **kw: bool) -> None:
        self.path, self.detail = path, detail
        super().__init__(f"budget database {path}: {operation} failed: {detail}",
                         operation=operation, **kw)


class BudgetStoreTimeout(BudgetStoreError, core.BudgetStoreTimeout):
    """The operation did not get the database within its time and was stopped;
    ``by_deadline``: the time was the caller's (see ``squirrel_models.BudgetStoreTimeout``)."""

    def __init__(self, path: str, operation: str, detail: str, *, by_deadline: bool,
                 pending: bool = False) -> None:
        super().__init__(path, operation, detail, by_deadline=by_deadline, pending=pending)


def timed_out(path: str, operation: str, deadline: StoreDeadline | None, detail: str
              ) -> BudgetStoreTimeout:
    if deadline is None:
        return BudgetStoreTimeout(path, operation, f"{detail} (busy_timeout_s)", by_deadline=False)
    return BudgetStoreTimeout(path, operation, f"stopped after {max(deadline.seconds, STORE_MIN_S):.2f}s, "
                              f"{deadline.why()}: {detail}", by_deadline=deadline.by_caller)


@contextmanager
def map_sqlite_errors(path: str, operation: str,
                      deadline: StoreDeadline | None = None) -> Iterator[None]:
    """Translate ``sqlite3`` errors raised inside the block into :class:`BudgetStoreError`
    (:class:`BudgetStoreTimeout` for a lock held past ``deadline`` or a statement stopped at
    it)."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = f"{type(exc).__name__}: {exc}"
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _TIMED_OUT:
            raise timed_out(path, operation, deadline, detail) from exc
        raise BudgetStoreError(path, operation, detail) from exc
