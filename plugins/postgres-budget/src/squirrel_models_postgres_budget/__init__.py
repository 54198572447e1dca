"""squirrel-models-postgres-budget: one budget and usage ledger for many router instances.

Configure with::

    [budget]
    backend = "postgres"
    options = { url_env = "SQUIRREL_BUDGET_DATABASE_URL", max_connections = 10 }
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

# psycopg is imported when a backend is created, not when the plugin is loaded: a router
# with this plugin installed but another backend configured pays nothing for it.
_EXPORTS = {
    "SCHEMA_VERSION": "schema",
    "BudgetStoreError": "errors",
    "BudgetStoreTimeout": "errors",
    "BudgetStoreUnavailable": "errors",
    "PostgresBudgetBackend": "backend",
    "PostgresBudgetOptions": "options",
    "UnusableDatabase": "errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .backend import PostgresBudgetBackend
    from .errors import BudgetStoreError, BudgetStoreTimeout, BudgetStoreUnavailable, UnusableDatabase
    from .options import PostgresBudgetOptions
    from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "BudgetStoreError",
    "BudgetStoreTimeout",
    "BudgetStoreUnavailable",
    "PostgresBudgetBackend",
    "PostgresBudgetOptions",
    "UnusableDatabase",
]
