"""squirrel-models-postgres-budget: one budget and usage ledger for many router instances.

Configure with::

    [budget]
    backend = "postgres"
    options = { url_env = "SQUIRREL_BUDGET_DATABASE_URL", max_connections = 10 }
"""

from __future__ import annotations

from .backend import PostgresBudgetBackend
from .errors import BudgetStoreError, BudgetStoreUnavailable, UnusableDatabase
from .options import PostgresBudgetOptions
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "BudgetStoreError",
    "BudgetStoreUnavailable",
    "PostgresBudgetBackend",
    "PostgresBudgetOptions",
    "UnusableDatabase",
]
