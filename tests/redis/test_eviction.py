"""A Redis that evicts keys when full (``maxmemory`` with an ``allkeys-*`` policy, the usual
settings of a cache) is refused by the budget and the rate limits at their first call: it
dropped the committed-spend hash under memory pressure, and the budget started again from
zero (a $1 limit admitted $0.90 twice), with no error anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from squirrel_models.budget import Charge
from squirrel_models.ratelimit import RateCharge
from squirrel_models.secrets import Secret
from squirrel_models_redis import (
    RedisBreakerStore,
    RedisBudgetBackend,
    RedisOptions,
    RedisRateLimitStore,
    UnusableRedis,
)

from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
DAY = Charge("global", "day", "2026-12-03", Decimal("1"))
RPM = RateCharge("global", "rpm", 10)


@pytest.fixture(params=["allkeys-lru", "volatile-lru"])
def server(request: pytest.FixtureRequest, redis_binary: str) -> Iterator[RedisServer]:
    s = RedisServer(redis_binary, extra=("--maxmemory", "4mb", "--maxmemory-policy", request.param))
    s.start()
    yield s
    s.remove()


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_a_server_that_evicts_keys_is_refused(server: RedisServer, prefix: str,
                                                    driver: str) -> None:
    url = Secret(server.url, opaque=False)
    options = RedisOptions(key_prefix=prefix, driver=driver)
    budget = RedisBudgetBackend(options, url=url)
    limits = RedisRateLimitStore(options, url=url)
    breakers = RedisBreakerStore(options, url=url)
    try:
        if "allkeys" in server.extra[-1]:
            with pytest.raises(UnusableRedis) as info:
                await budget.reserve([DAY], Decimal("0.9"), ttl=60)
            assert info.value.field == "budget.options.url_env"
            assert "allkeys-lru" in str(info.value) and PASSWORD not in str(info.value)
            with pytest.raises(UnusableRedis) as info:
                await limits.reserve([RPM], 1, ttl=60)
            assert info.value.field == "rate_limits.options.url_env"
            # nothing was claimed or written under the prefix
            assert await budget.execute("keys", "KEYS", f"{{{prefix}}}:*") == []
        else:  # volatile-*: only keys with a ttl go, and none of this plugin's has one
            await budget.settle(await budget.reserve([DAY], Decimal("0.9"), ttl=60), Decimal("0.9"))
            await limits.settle(await limits.reserve([RPM], 1, ttl=60), 1)
        # breaker holds are advisory: any server will do
        await breakers.publish("p/m", 5.0)
        assert set(await breakers.fetch()) == {"p/m"}
    finally:
        for store in (budget, limits, breakers):
            await store.aclose()
