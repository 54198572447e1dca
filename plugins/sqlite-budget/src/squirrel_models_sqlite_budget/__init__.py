"""squirrel-models-sqlite-budget: durable, multi-process budgets and the usage ledger in SQLite.

Configure with::

    [budget]
    backend = "sqlite"
    options = { path = "~/.local/share/squirrel-models/budget.sqlite3" }
"""

from __future__ import annotations

from squirrel_models.sqlbudget import from_nanos, to_nanos

from .backend import SqliteBudgetBackend, SqliteBudgetOptions
from .errors import BudgetStoreError, BudgetStoreTimeout, UnusableDatabase
from .schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "BudgetStoreError",
    "BudgetStoreTimeout",
    "SqliteBudgetBackend",
    "SqliteBudgetOptions",
    "UnusableDatabase",
    "from_nanos",
    "to_nanos",
]
