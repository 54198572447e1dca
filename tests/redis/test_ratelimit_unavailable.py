"""The rate-limit store with Redis unreachable: killed (refused) or hung (SIGSTOP).
``fail_closed`` raises the typed error (a RateLimitStoreError) within the caller's deadline;
``fail_open`` admits against the same limits counted by this process alone. Never a hang."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
from squirrel_models.errors import RateLimitExceeded, RateLimitStoreError
from squirrel_models.ratelimit import RateCharge
from squirrel_models.secrets import Secret
from squirrel_models_redis import (
    RateLimitRedisTimeout,
    RateLimitRedisUnavailable,
    RedisOptions,
    RedisRateLimitStore,
)

from tests.support.factories import closing_factory

from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
RPM = RateCharge("model:p/m", "rpm", 3)
SLOT = RateCharge("global", "concurrent", 2)
SLACK = 0.35


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary)
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def make(own_server: RedisServer, prefix: str) -> AsyncIterator[Callable[..., RedisRateLimitStore]]:
    def build(**options: Any) -> RedisRateLimitStore:
        options.setdefault("key_prefix", prefix)
        options.setdefault("connect_timeout_s", 0.5)
        options.setdefault("operation_timeout_s", 0.5)
        return RedisRateLimitStore(RedisOptions(**options), url=Secret(own_server.url, opaque=False))

    async with closing_factory(build) as make_:
        yield make_


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_fail_closed_refuses_at_once(make: Callable[..., RedisRateLimitStore],
                                           own_server: RedisServer, driver: str) -> None:
    s = make(driver=driver)
    lease = await s.reserve([RPM, SLOT], 10, ttl=60)
    own_server.kill()
    for op in ("reserve", "settle", "release", "usage"):
        t0 = time.monotonic()
        with pytest.raises(RateLimitRedisUnavailable) as info, anyio.fail_after(5):
            if op == "reserve":
                await s.reserve([RPM, SLOT], 10, ttl=60)
            elif op == "settle":
                await s.settle(lease, 5)
            elif op == "release":
                await s.release(lease)
            else:
                await s.usage([RPM])
        assert time.monotonic() - t0 < 0.5 + SLACK, op
        assert isinstance(info.value, RateLimitStoreError) and info.value.operation == op
        assert PASSWORD not in str(info.value) + repr(info.value)


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_hung_server_ends_by_the_callers_deadline(make: Callable[..., RedisRateLimitStore],
                                                        own_server: RedisServer, driver: str) -> None:
    s = make(driver=driver, operation_timeout_s=30.0, connect_timeout_s=30.0)
    lease = await s.reserve([RPM], 10, ttl=60)
    own_server.pause()
    try:
        for op in ("reserve", "settle"):
            t0 = time.monotonic()
            raised: BaseException | None = None
            with anyio.CancelScope(deadline=anyio.current_time() + 0.5) as scope:
                try:
                    if op == "reserve":
                        await s.reserve([RPM], 10, ttl=60)
                    else:
                        await s.settle(lease, 5)
                except RateLimitRedisTimeout as exc:
                    raised = exc
            wall = time.monotonic() - t0
            assert wall <= 0.5 + SLACK, (op, wall)
            # A reserve cut by the deadline gives way to the caller's cancellation.
            if raised is None:
                assert op == "reserve" and scope.cancelled_caught
            else:
                assert isinstance(raised, RateLimitRedisTimeout) and raised.by_deadline
    finally:
        own_server.resume()
    with anyio.fail_after(5):
        await s.usage([RPM])  # usable again at once


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_fail_open_counts_locally(make: Callable[..., RedisRateLimitStore],
                                        own_server: RedisServer, driver: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    s = make(driver=driver, on_unavailable="fail_open", unavailable_retry_s=0.2)
    shared = await s.reserve([RPM, SLOT], 10, ttl=60)
    own_server.kill()
    caplog.set_level(logging.WARNING, "squirrel_models_redis")
    with anyio.fail_after(5):
        await s.settle(shared, 5)  # dropped: the lease expires by itself
        leases = [await s.reserve([RPM, SLOT], 10, ttl=60) for _ in range(2)]
        with pytest.raises(RateLimitExceeded) as info:  # the same limits, counted here
            await s.reserve([RPM, SLOT], 10, ttl=60)
        assert info.value.kind == "concurrent"
        await s.settle(leases[0], 5)
        await s.release(leases[1])
        await s.reserve([RPM], 10, ttl=60)
        await s.reserve([RPM], 10, ttl=60)
        with pytest.raises(RateLimitExceeded):
            await s.reserve([RPM], 10, ttl=60)  # rpm 3: one settled, two more
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("redis unreachable" in w for w in warnings) == 1, warnings
    own_server.start()
    await anyio.sleep(0.25)
    with anyio.fail_after(5):
        (u,) = await s.usage([RPM])
    assert u.used == 0  # a fresh server (no persistence): shared counts again
    assert any("redis answers again" in r.getMessage() for r in caplog.records)
