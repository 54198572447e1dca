"""The core's rate-limit store conformance suite, on both drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from squirrel_models.secrets import Secret
from squirrel_models.testing.conformance import RateLimitStoreConformance
from squirrel_models_redis import RedisOptions, RedisRateLimitStore

from .redisserver import RedisServer

pytestmark = pytest.mark.anyio


class TestRedisRateLimitConformance(RateLimitStoreConformance):
    @pytest.fixture(params=["auto", "threads"])
    async def store(self, request: pytest.FixtureRequest, redis_server: RedisServer,
                    prefix: str) -> AsyncIterator[RedisRateLimitStore]:
        s = RedisRateLimitStore(RedisOptions(key_prefix=prefix, driver=request.param),
                                url=Secret(redis_server.url, opaque=False))
        yield s
        await s.aclose()
