"""Closing a store with settlements that did not reach Redis (a cut connection, ``fail_open``):
close tries them once more, within the store's own timeout, and logs at WARNING what it could
not write. They used to wait for a next call, which a process shutting down cleanly never
makes: the spend was lost and each lease held the worst case until it expired."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models.ratelimit import RateCharge
from squirrel_models.secrets import Secret
from squirrel_models_redis import (
    RateLimitRedisUnavailable,
    RedisBudgetBackend,
    RedisOptions,
    RedisRateLimitStore,
    RedisUnavailable,
)

from tests.support.factories import closing_factory
from tests.support.stalls import loop_stalls

from .redisserver import RedisServer

pytestmark = pytest.mark.anyio
C = Charge("global", "total", "total", Decimal("1.00"))
TPM = RateCharge("model:p/m", "tpm", 100)
SLOT = RateCharge("global", "concurrent", 2)
DRIVERS = ["auto", "threads"]
#: The store's own timeout in these tests (connect + operation).
TIMEOUT = 0.5 + 0.5
#: How late past it close may return on a busy 2-core machine.
SLACK = 0.5


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A server of this test's own persisting every write (``appendfsync always``): killed
    and started again, it still holds the leases."""
    server = RedisServer(redis_binary, extra=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def make(own_server: RedisServer, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    def build(kind: type[Any] = RedisBudgetBackend, **options: Any) -> Any:
        options.setdefault("key_prefix", prefix)
        options.setdefault("connect_timeout_s", 0.5)
        options.setdefault("operation_timeout_s", 0.5)
        return kind(RedisOptions(**options), url=Secret(own_server.url, opaque=False))

    async with closing_factory(build) as make_:
        yield make_


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_close_settles_what_did_not_reach_redis(
        make: Callable[..., Any], own_server: RedisServer, driver: str, mode: str,
        caplog: pytest.LogCaptureFixture) -> None:
    b: RedisBudgetBackend = make(driver=driver, on_unavailable=mode)
    first = await b.reserve([C], Decimal("0.30"), ttl=600)
    second = await b.reserve([C], Decimal("0.30"), ttl=600)
    own_server.kill()
    for r, amount in ((first, "0.20"), (second, "0.05")):
        if mode == "fail_closed":
            with pytest.raises(RedisUnavailable):
                await b.settle(r, Decimal(amount))
        else:  # kept to be replayed when redis answers again
            await b.settle(r, Decimal(amount))
    own_server.start()
    with anyio.fail_after(10):
        await b.aclose()
    (u,) = await make().usage([C])
    assert (u.committed, u.reserved) == (Decimal("0.25"), 0), u
    assert "unreachable at close" not in caplog.text


@pytest.mark.parametrize("how", ["killed", "hung"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_close_is_bounded_and_says_what_it_lost_when_redis_stays_down(
        make: Callable[..., Any], own_server: RedisServer, driver: str, how: str,
        caplog: pytest.LogCaptureFixture) -> None:
    b: RedisBudgetBackend = make(driver=driver)
    r = await b.reserve([C], Decimal("0.30"), ttl=600)
    own_server.kill() if how == "killed" else own_server.pause()
    try:
        with pytest.raises(RedisUnavailable):
            await b.settle(r, Decimal("0.20"))
        caplog.clear()
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, "squirrel_models_redis"), anyio.fail_after(10):
                await b.aclose()
            wall = stalls.elapsed(t0)
    finally:
        own_server.resume()
    (rec,) = [x for x in caplog.records if "unreachable at close" in x.getMessage()]
    assert rec.levelno == logging.WARNING
    assert "1 settlement(s)" in rec.getMessage(), rec.getMessage()
    assert wall < TIMEOUT + SLACK, wall  # the store's own timeout, not a hang


@pytest.mark.parametrize("driver", DRIVERS)
async def test_rate_limit_close_settles_what_did_not_reach_redis(
        make: Callable[..., Any], own_server: RedisServer, driver: str,
        caplog: pytest.LogCaptureFixture) -> None:
    s: RedisRateLimitStore = make(RedisRateLimitStore, driver=driver)
    lease = await s.reserve([TPM, SLOT], 40, ttl=600)
    own_server.kill()
    with pytest.raises(RateLimitRedisUnavailable):
        await s.settle(lease, 7)
    own_server.start()
    with anyio.fail_after(10):
        await s.aclose()
    tokens, slots = await make(RedisRateLimitStore).usage([TPM, SLOT])
    assert (tokens.used, tokens.reserved) == (7, 0), tokens
    assert slots.reserved == 0, slots
    assert "unreachable at close" not in caplog.text


async def test_rate_limit_close_says_what_it_lost_when_redis_stays_down(
        make: Callable[..., Any], own_server: RedisServer,
        caplog: pytest.LogCaptureFixture) -> None:
    s: RedisRateLimitStore = make(RedisRateLimitStore)
    lease = await s.reserve([TPM], 40, ttl=600)
    own_server.kill()
    with pytest.raises(RateLimitRedisUnavailable):
        await s.settle(lease, 7)
    with caplog.at_level(logging.WARNING, "squirrel_models_redis"), anyio.fail_after(10):
        await s.aclose()
    assert "1 rate-limit settle(s)" in caplog.text
