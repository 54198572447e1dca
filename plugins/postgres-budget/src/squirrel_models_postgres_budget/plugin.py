"""The plugin module behind the ``postgres`` entry point: registers the ``postgres`` backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl

from .options import PostgresBudgetOptions

if TYPE_CHECKING:
    from .backend import PostgresBudgetBackend

__all__ = ["register_budget_backends"]


def _factory(options: PostgresBudgetOptions) -> PostgresBudgetBackend:
    from .backend import PostgresBudgetBackend  # psycopg loads here, when one is configured

    return PostgresBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "postgres", _factory, options_type=PostgresBudgetOptions,
        description="budgets and usage ledger in PostgreSQL, shared by many hosts")]
