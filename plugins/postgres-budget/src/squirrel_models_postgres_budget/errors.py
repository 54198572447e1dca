"""Errors of the PostgreSQL budget backend, and the one helper that maps ``psycopg`` errors.

::

    SquirrelError
    ├── ConfigError
    │   └── UnusableDatabase          the schema belongs to something else or to a newer
    │                                 version of this plugin; nothing was modified
    └── squirrel_models.BudgetStoreError
        └── BudgetStoreError          an operation failed in the database (``sqlstate``)
            └── BudgetStoreUnavailable    the database cannot be reached (refused, timed out,
                │                         the connection was lost): budgeted requests are
                │                         refused, never counted in process memory instead
                └── BudgetStoreTimeout    the operation did not finish in the time it had (the
                                          request's deadline, the cleanup bound, or the
                                          backend's own timeouts) and the server stopped it,
                                          or (``pending``) the caller stopped waiting for it
                                          (also a ``squirrel_models.BudgetStoreTimeout``)

Messages never contain the database URL or its password: libpq and psycopg messages are
scrubbed (:func:`scrub`) and the original exception is not chained, since its text is not.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from squirrel_models import errors as core
from squirrel_models.budget import STORE_MIN_S, StoreDeadline
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import MASK, redact

__all__ = ["BudgetStoreError", "BudgetStoreTimeout", "BudgetStoreUnavailable", "UnusableDatabase",
           "map_psycopg_errors", "scrub"]

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# Connection-class errors: 08xxx (connection exception), 57P01..57P05 (shutdown, crash,
# cannot connect now, database dropped, idle timeout).
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "57P04", "57P05")
# The statement was stopped: statement_timeout (query canceled), lock_timeout.
_TIMEOUT_STATES = ("57014", "55P03")


def scrub(text: str) -> str:
    """``text`` without any registered secret, URL password or ``password=`` value; first line
    only (libpq adds hints on further lines)."""
    text = redact(text).strip().splitlines()[0] if text.strip() else ""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    return _KV_PASSWORD.sub(rf"\g<1>{MASK}", text)


class UnusableDatabase(ConfigError):
    """Schema ``schema`` cannot be used as a budget store; it was left untouched."""

    def __init__(self, schema: str, reason: str) -> None:
        self.schema, self.reason = schema, reason
        super().__init__(f"schema {schema!r}: {reason}; nothing was modified",
                         field="budget.options.schema")


class BudgetStoreError(core.BudgetStoreError):
    """A budget ``operation`` failed in PostgreSQL; ``sqlstate`` is the server's code if any;
    ``field``: the option whose bound ran out, when one did (``budget.options.startup_timeout_s``)."""

    field: str | None = None

    def __init__(self, operation: str, detail: str, sqlstate: str | None = None) -> None:
        self.detail, self.sqlstate = detail, sqlstate
        super().__init__(f"budget database: {operation} failed: {detail}", operation=operation)


class BudgetStoreUnavailable(BudgetStoreError):
    """The budget database cannot be reached; budgeted requests are refused until it can."""

    def __init__(self, operation: str, detail: str, sqlstate: str | None = None) -> None:
        super().__init__(operation, detail, sqlstate)
        self.args = (f"budget database unavailable: {operation} refused: {detail}",)


class BudgetStoreTimeout(BudgetStoreUnavailable, core.BudgetStoreTimeout):
    """The operation was stopped at the end of its time; ``by_deadline``: that time was the
    caller's; ``pending``: the caller stopped waiting but the call goes on in the background
    (see ``squirrel_models.BudgetStoreTimeout``)."""

    def __init__(self, operation: str, detail: str, sqlstate: str | None = None, *,
                 by_deadline: bool = False, pending: bool = False) -> None:
        super().__init__(operation, detail, sqlstate)
        self.by_deadline, self.pending = by_deadline, pending
        self.args = (f"budget database: {operation} timed out: {detail}",)


def is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (not the statement) failed."""
    import psycopg
    import psycopg_pool

    if isinstance(exc, psycopg_pool.PoolTimeout | TimeoutError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES
    return isinstance(exc, psycopg.InterfaceError)


def _timed_out(operation: str, deadline: StoreDeadline | None, detail: str,
               sqlstate: str | None = None) -> BudgetStoreTimeout:
    if deadline is None:
        return BudgetStoreTimeout(operation, detail, sqlstate)
    # The caller's deadline set the limit and it is (about) spent: not one of our own
    # timeouts (connect_timeout_s, operation_timeout_s) running out first.
    by_deadline = deadline.spent()
    why = deadline.why() if by_deadline else "the backend's own timeout"
    return BudgetStoreTimeout(operation, f"stopped after {max(deadline.seconds, STORE_MIN_S):.2f}s, {why}: {detail}",
                              sqlstate, by_deadline=by_deadline)


def translate(exc: BaseException, operation: str,
              deadline: StoreDeadline | None = None) -> BudgetStoreError:
    """The typed error for a ``psycopg``/pool/timeout exception raised by ``operation``
    (bounded by ``deadline``, if given)."""
    import psycopg_pool  # already loaded by whoever raised: psycopg is imported lazily

    if isinstance(exc, psycopg_pool.PoolClosed):
        return BudgetStoreError(operation, "the backend is closed")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        detail = f"no database connection: {scrub(str(exc))}"
        if deadline is not None and deadline.spent():
            return _timed_out(operation, deadline, detail)
        return BudgetStoreUnavailable(operation, detail)
    if isinstance(exc, TimeoutError):
        return _timed_out(operation, deadline, "the database did not answer in time")
    sqlstate = getattr(exc, "sqlstate", None)
    detail = f"{type(exc).__name__}: {scrub(str(exc))}"
    if sqlstate in _TIMEOUT_STATES:
        return _timed_out(operation, deadline, detail, sqlstate)
    if is_connection_loss(exc):
        return BudgetStoreUnavailable(operation, detail, sqlstate)
    return BudgetStoreError(operation, detail, sqlstate)


@asynccontextmanager
async def map_psycopg_errors(operation: str, deadline: StoreDeadline | None = None
                             ) -> AsyncIterator[None]:
    """Translate database errors raised inside the block into :class:`BudgetStoreError`."""
    import psycopg

    try:
        yield
    except (psycopg.Error, TimeoutError) as exc:
        # Not chained: the original's text may carry the connection string.
        raise translate(exc, operation, deadline) from None
