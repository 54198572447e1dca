"""The plugin module behind the ``postgres`` entry point: registers the ``postgres`` backend."""

from __future__ import annotations

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl

from .backend import PostgresBudgetBackend
from .options import PostgresBudgetOptions

__all__ = ["register_budget_backends"]


def _factory(options: PostgresBudgetOptions) -> PostgresBudgetBackend:
    return PostgresBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "postgres", _factory, options_type=PostgresBudgetOptions,
        description="budgets and usage ledger in PostgreSQL, shared by many hosts")]
