"""The plugin module behind the ``sqlite`` entry point: registers the ``sqlite`` backend.

Registering needs the options only (a configuration error names its field at start-up); the
backend, with sqlite3, asyncio and its worker threads, is imported when one is created, so a
router with this plugin installed but another backend configured pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl

from .options import SqliteBudgetOptions

if TYPE_CHECKING:
    from .backend import SqliteBudgetBackend

__all__ = ["register_budget_backends"]


def _factory(options: SqliteBudgetOptions) -> SqliteBudgetBackend:
    from .backend import SqliteBudgetBackend

    return SqliteBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "sqlite", _factory, options_type=SqliteBudgetOptions,
        description="durable budgets and usage ledger in one SQLite file, shared by processes")]
