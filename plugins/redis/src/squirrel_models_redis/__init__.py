"""squirrel-models-redis: budgets (and their usage ledger), rate limits and circuit-breaker
cooldowns shared by many router instances on Redis.

Configure with::

    [budget]
    backend = "redis"
    options = { url_env = "SQUIRREL_REDIS_URL", on_unavailable = "fail_closed" }

    [rate_limits]
    store = "redis"
    options = { url_env = "SQUIRREL_REDIS_URL" }

    [circuit_breaker]
    shared = "redis"
    shared_options = { url_env = "SQUIRREL_REDIS_URL" }
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

# redis-py is imported when a store is created, not when the plugin is loaded: a router with
# this plugin installed but another backend configured pays nothing for it.
_EXPORTS = {
    "DATA_VERSION": "budget",
    "RateLimitRedisAuthRefused": "errors",
    "RateLimitRedisError": "errors",
    "RateLimitRedisTimeout": "errors",
    "RateLimitRedisUnavailable": "errors",
    "RedisRateLimitStore": "ratelimit",
    "RedisBreakerStore": "breakers",
    "RedisAuthRefused": "errors",
    "RedisBudgetBackend": "budget",
    "RedisOptions": "options",
    "RedisStoreError": "errors",
    "RedisTimeout": "errors",
    "RedisUnavailable": "errors",
    "UnusableRedis": "errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .breakers import RedisBreakerStore
    from .budget import DATA_VERSION, RedisBudgetBackend
    from .errors import (
        RateLimitRedisAuthRefused,
        RateLimitRedisError,
        RateLimitRedisTimeout,
        RateLimitRedisUnavailable,
        RedisAuthRefused,
        RedisStoreError,
        RedisTimeout,
        RedisUnavailable,
        UnusableRedis,
    )
    from .options import RedisOptions
    from .ratelimit import RedisRateLimitStore

__all__ = [
    "DATA_VERSION",
    "RateLimitRedisAuthRefused",
    "RateLimitRedisError",
    "RateLimitRedisTimeout",
    "RateLimitRedisUnavailable",
    "RedisAuthRefused",
    "RedisBreakerStore",
    "RedisBudgetBackend",
    "RedisOptions",
    "RedisRateLimitStore",
    "RedisStoreError",
    "RedisTimeout",
    "RedisUnavailable",
    "UnusableRedis",
]
