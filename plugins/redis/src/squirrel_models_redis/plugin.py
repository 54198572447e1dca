"""The plugin module behind the ``redis`` entry point: registers the ``redis`` budget backend,
rate-limit store and breaker store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.budget import BudgetBackendType
from squirrel_models.hookspecs import hookimpl
from squirrel_models.ratelimit import RateLimitStoreType
from squirrel_models.sharedbreakers import BreakerStoreType

from .options import RedisOptions

if TYPE_CHECKING:
    from .breakers import RedisBreakerStore
    from .budget import RedisBudgetBackend
    from .ratelimit import RedisRateLimitStore

__all__ = ["register_breaker_stores", "register_budget_backends", "register_ratelimit_stores"]


def _budget(options: RedisOptions) -> RedisBudgetBackend:
    from .budget import RedisBudgetBackend  # redis-py loads here, when one is configured

    return RedisBudgetBackend(options)


@hookimpl
def register_budget_backends() -> list[BudgetBackendType]:
    return [BudgetBackendType(
        "redis", _budget, options_type=RedisOptions,
        description="budgets and usage ledger in Redis, shared by many hosts")]


def _ratelimit(options: RedisOptions) -> RedisRateLimitStore:
    from .ratelimit import RedisRateLimitStore

    return RedisRateLimitStore(options)


@hookimpl
def register_ratelimit_stores() -> list[RateLimitStoreType]:
    return [RateLimitStoreType(
        "redis", _ratelimit, options_type=RedisOptions,
        description="rpm, tpm and concurrency counts in Redis, shared by many hosts")]


def _breakers(options: RedisOptions) -> RedisBreakerStore:
    from .breakers import RedisBreakerStore

    return RedisBreakerStore(options)


@hookimpl
def register_breaker_stores() -> list[BreakerStoreType]:
    return [BreakerStoreType(
        "redis", _breakers, options_type=RedisOptions,
        description="circuit-breaker cooldowns shared by many hosts")]
