"""squirrel-models-sqlite-budget: durable, multi-process budgets and the usage ledger in SQLite.

Configure with::

    [budget]
    backend = "sqlite"
    options = { path = "~/.local/share/squirrel-models/budget.sqlite3" }
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports
from squirrel_models.sqlbudget import from_nanos, to_nanos  # loaded by the options anyway

# sqlite3, asyncio and the backend are imported when a backend is created (or a name below is
# first used), not when the plugin is loaded: a router with this plugin installed but another
# backend configured pays nothing for them.
_EXPORTS = {
    "APPLICATION_ID": "schema",
    "SCHEMA_VERSION": "schema",
    "BudgetStoreError": "errors",
    "BudgetStoreTimeout": "errors",
    "SqliteBudgetBackend": "backend",
    "SqliteBudgetOptions": "options",
    "UnusableDatabase": "errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .backend import SqliteBudgetBackend
    from .errors import BudgetStoreError, BudgetStoreTimeout, UnusableDatabase
    from .options import SqliteBudgetOptions
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
