"""squirrel-models-postgres-budget: one budget and usage ledger for many router instances.

Configure with::

    [budget]
    backend = "postgres"
    options = { url_env = "SQUIRREL_BUDGET_DATABASE_URL", max_connections = 10 }
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# psycopg is imported when a backend is created, not when the plugin is loaded: a router
# with this plugin installed but another backend configured pays nothing for it.
_EXPORTS = {
    "SCHEMA_VERSION": ".schema",
    "BudgetStoreError": ".errors",
    "BudgetStoreTimeout": ".errors",
    "BudgetStoreUnavailable": ".errors",
    "PostgresBudgetBackend": ".backend",
    "PostgresBudgetOptions": ".options",
    "UnusableDatabase": ".errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
