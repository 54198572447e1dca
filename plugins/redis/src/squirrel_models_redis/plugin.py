"""The plugin module behind the ``redis`` entry point: registers the ``redis`` budget backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl

from .options import RedisOptions

if TYPE_CHECKING:
    from .budget import RedisBudgetBackend

__all__ = ["register_budget_backends"]


def _budget(options: RedisOptions) -> RedisBudgetBackend:
    from .budget import RedisBudgetBackend  # redis-py loads here, when one is configured

    return RedisBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "redis", _budget, options_type=RedisOptions,
        description="budgets and usage ledger in Redis, shared by many hosts")]
