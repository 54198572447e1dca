"""The plugin module behind the ``sqlite`` entry point: registers the ``sqlite`` backend."""

from __future__ import annotations

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl

from .backend import SqliteBudgetBackend, SqliteBudgetOptions

__all__ = ["register_budget_backends"]


def _factory(options: SqliteBudgetOptions) -> SqliteBudgetBackend:
    return SqliteBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "sqlite", _factory, options_type=SqliteBudgetOptions,
        description="durable budgets and usage ledger in one SQLite file, shared by processes")]
