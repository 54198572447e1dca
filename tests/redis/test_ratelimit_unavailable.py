"""The rate-limit store with Redis unreachable: killed (refused) or hung (SIGSTOP).
``fail_closed`` raises the typed error (a RateLimitStoreError) within the caller's deadline;
``fail_open`` admits against the same limits counted by this process alone. Never a hang."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
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
from squirrel_models_redis import rlscripts as R

from tests.support.factories import closing_factory
from tests.support.stalls import loop_stalls

from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
RPM = RateCharge("model:p/m", "rpm", 3)
SLOT = RateCharge("global", "concurrent", 2)
SLACK = 0.35


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
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
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
            assert stalls.elapsed(t0) < 0.5 + SLACK, (op, stalls)
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
            raised: BaseException | None = None
            async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
                t0 = time.monotonic()
                with anyio.CancelScope(deadline=anyio.current_time() + 0.5) as scope:
                    try:
                        if op == "reserve":
                            await s.reserve([RPM], 10, ttl=60)
                        else:
                            await s.settle(lease, 5)
                    except RateLimitRedisTimeout as exc:
                        raised = exc
                wall = stalls.elapsed(t0)
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
        await s.settle(shared, 5)  # run when Redis answers (this one restarts empty)
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


@pytest.mark.parametrize("cut", ["deadline", "own-timeout"])
@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_a_lease_the_hung_server_admits_after_its_caller_left_is_undone_at_once(
        make: Callable[..., RedisRateLimitStore], own_server: RedisServer, driver: str,
        cut: str) -> None:
    """A hung server (SIGSTOP) takes the reserve and runs it when it resumes, after its
    caller left: its concurrency slot and its admissions were held until the lease's ttl
    (ten minutes by default), so through the gateway every request of the key was refused
    429 long after Redis was back. The store's next call now undoes it, as the budget does."""
    s = make(driver=driver, operation_timeout_s=0.3 if cut == "own-timeout" else 30.0,
             connect_timeout_s=30.0)
    other = make(driver=driver)
    await s.release(await s.reserve([RPM, SLOT], 10, ttl=600))  # a warm connection
    own_server.pause()
    try:
        with anyio.move_on_after(0.3 if cut == "deadline" else 5), \
                contextlib.suppress(RateLimitRedisTimeout):
            await s.reserve([RPM, SLOT], 10, ttl=600)
            pytest.fail("a hung server answered")
    finally:
        own_server.resume()
    with anyio.fail_after(10):  # the server runs the reserve it took
        while (await other.usage([SLOT]))[0].used == 0:
            await anyio.sleep(0.01)
    with anyio.fail_after(5):
        rpm, slot = await s.usage([RPM, SLOT])  # this store's next call undoes it
    assert (rpm.used, slot.used) == (0, 0), (rpm, slot)
    leases = [await s.reserve([RPM, SLOT], 10, ttl=600) for _ in range(2)]  # all the room
    for lease in leases:
        await s.release(lease)


async def test_a_reserve_that_arrives_after_its_undo_holds_nothing(
        make: Callable[..., RedisRateLimitStore]) -> None:
    """The other order: the undo reaches the server first, the late reserve after it (another
    connection): a tombstone makes the reserve hold nothing."""
    s = make()
    lid = "late-lease"
    s._give_up(lid, (RPM, SLOT), 600.0)
    await s.usage([RPM])  # runs the undo: nothing to drop yet, a tombstone left
    args = [lid, 10, "600.0", "", "", 1000, *s._args([RPM, SLOT])]
    reply = await s._client.eval("reserve", R.RL_RESERVE, s._keys([RPM, SLOT]), args)
    assert int(reply[0]) == 2
    rpm, slot = await s.usage([RPM, SLOT])
    assert (rpm.used, slot.used) == (0, 0)


async def test_a_timeout_says_how_long_the_call_waited(make: Callable[..., RedisRateLimitStore],
                                                      own_server: RedisServer) -> None:
    """The plugin's own operation timeout (0.3 s) cut a call made with 5 s of the request's
    deadline left: the message said "stopped after 5.00s, the plugin's own timeout" (the
    caller's time, which was not what stopped it)."""
    s = make(operation_timeout_s=0.3, connect_timeout_s=30.0)
    await s.usage([RPM])  # a warm connection
    own_server.pause()
    try:
        with anyio.fail_after(5), pytest.raises(RateLimitRedisTimeout) as info:
            await s.reserve([RPM], 10, ttl=60)
    finally:
        own_server.resume()
    waited = float(re.search(r"stopped after ([0-9.]+)s", str(info.value)).group(1))
    assert 0.25 <= waited < 2.0, str(info.value)
    assert "own timeout" in str(info.value) and not info.value.by_deadline


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_a_settle_that_did_not_get_through_is_run_by_the_next_call(
        redis_binary: str, prefix: str, driver: str) -> None:
    """Redis with ``appendonly`` (as the docs advise) killed while an attempt ran: its settle
    was refused, and once the server was back (the lease restored from its file) the lease
    held its concurrency slot until its ttl, ten minutes by default. The store runs such a
    settle again with its next call (settling twice is harmless: by id)."""
    server = RedisServer(redis_binary, extra=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    s = RedisRateLimitStore(RedisOptions(key_prefix=prefix, driver=driver, connect_timeout_s=0.5,
                                         operation_timeout_s=0.5),
                            url=Secret(server.url, opaque=False))
    try:
        lease = await s.reserve([RPM, SLOT], 10, ttl=600)
        server.kill()
        with pytest.raises(RateLimitRedisUnavailable):
            await s.settle(lease, 4)
        server.start()
        with anyio.fail_after(5):
            rpm, slot = await s.usage([RPM, SLOT])
        assert slot.used == 0, slot  # the slot is back at once
        assert (rpm.used, rpm.reserved) == (1, 0), rpm  # the request still counts, settled
    finally:
        await s.aclose()
        server.remove()


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_fail_open_gives_back_what_was_settled_during_the_outage(
        make: Callable[..., RedisRateLimitStore], own_server: RedisServer, driver: str) -> None:
    """``fail_open`` with Redis hung for half a second: the shared leases of the requests in
    flight were settled and released while the store counted locally, and those calls were
    dropped, so once Redis answered their slots stayed held until the leases' ttl (ten
    minutes by default) and their worst-case tokens counted in full: the store chosen to
    keep serving through an outage refused every request of a ``max_concurrent`` scope for
    ten minutes after a blip. They are now run when Redis answers again, as with
    ``fail_closed``."""
    tpm = RateCharge("model:p/m", "tpm", 100)
    s = make(driver=driver, on_unavailable="fail_open", unavailable_retry_s=0.2,
             operation_timeout_s=0.3, connect_timeout_s=30.0)
    settled = await s.reserve([RPM, tpm, SLOT], 10, ttl=600)
    released = await s.reserve([RPM, tpm, SLOT], 10, ttl=600)
    own_server.pause()
    try:
        with anyio.fail_after(5):
            local = await s.reserve([RPM, SLOT], 10, ttl=600)  # times out: goes local
            await s.settle(settled, 4)
            await s.release(released)
            await s.settle(local, 4)
    finally:
        own_server.resume()
    await anyio.sleep(0.3)  # past unavailable_retry_s: the next call goes to Redis
    with anyio.fail_after(5):
        rpm, tokens, slot = await s.usage([RPM, tpm, SLOT])
    assert slot.used == 0, slot  # both slots back at once
    assert (rpm.used, rpm.reserved) == (1, 0), rpm  # the settled request counts; not the other
    assert (tokens.used, tokens.reserved) == (4, 0), tokens  # what was really used
    leases = [await s.reserve([RPM, tpm, SLOT], 10, ttl=600) for _ in range(2)]  # all the room
    for lease in leases:
        await s.release(lease)


async def test_a_settle_that_fails_on_the_server_does_not_block_every_call_after_it(
        make: Callable[..., RedisRateLimitStore], caplog: pytest.LogCaptureFixture) -> None:
    """A settle waiting to be run again (it did not get through) runs before each call; one
    the server refuses for good (a script error: here a lease whose record is unreadable)
    was kept and raised before every later call, so the store refused all traffic. It is
    now dropped (logged), its lease left to expire."""
    s = make()
    lease = await s.reserve([RPM, SLOT], 10, ttl=600)
    await s._client.execute("corrupt", "HSET", s._key("leases"), lease.id, "not json")
    s._unsettled[lease.id] = (lease.charges, 4)
    with anyio.fail_after(5):
        for _ in range(2):
            await s.release(await s.reserve([RPM], 10, ttl=600))
    assert "left to expire" in caplog.text
