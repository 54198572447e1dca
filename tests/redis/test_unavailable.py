"""Redis unreachable: killed (connections refused) or hung (SIGSTOP: connections accepted by
the kernel, never answered). ``fail_closed`` refuses within the caller's deadline with the
typed error; ``fail_open`` logs a warning, enforces the limits locally and, when Redis is
back, replays what it settled meanwhile, once. Never a hang."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelCard, Price, SquirrelError
from squirrel_models.budget import Charge, LedgerRow, Reservation
from squirrel_models.errors import BudgetExceeded, BudgetStoreError, DeadlineExceeded
from squirrel_models.secrets import Secret
from squirrel_models.testing import Reply, ScriptedProvider
from squirrel_models_redis import RedisBudgetBackend, RedisOptions, RedisTimeout, RedisUnavailable

from tests.support.factories import closing_factory
from tests.support.stalls import loop_stalls

from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
C = Charge("global", "total", "total", Decimal("1.00"))
DRIVERS = ["auto", "threads"]
#: How late past its deadline a refused call may return on a busy 2-core machine.
SLACK = 0.35


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A server of this test's own (killing it must not disturb the other tests), persisting
    every write (``appendfsync always``): a SIGKILL loses nothing it acknowledged."""
    server = RedisServer(redis_binary, extra=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def make(own_server: RedisServer, prefix: str
               ) -> AsyncIterator[Callable[..., RedisBudgetBackend]]:
    def build(**options: Any) -> RedisBudgetBackend:
        options.setdefault("key_prefix", prefix)
        options.setdefault("connect_timeout_s", 0.5)
        options.setdefault("operation_timeout_s", 0.5)
        return RedisBudgetBackend(RedisOptions(**options), url=Secret(own_server.url, opaque=False))

    async with closing_factory(build) as make_:
        yield make_


def no_secret(exc: BaseException) -> None:
    text = str(exc) + repr(exc)
    assert PASSWORD not in text and "redis://" not in text, text


async def call(b: RedisBudgetBackend, op: str, r: Reservation) -> None:
    """The budget operation ``op`` (reserve, settle, release or usage); settle and release
    act on ``r``."""
    if op == "reserve":
        await b.reserve([C], Decimal("0.10"), ttl=60)
    elif op == "settle":
        await b.settle(r, Decimal("0.05"))
    elif op == "release":
        await b.release(r)
    else:
        await b.usage([C])


@pytest.mark.parametrize("driver", DRIVERS)
async def test_fail_closed_killed_server_refuses_at_once(make: Callable[..., RedisBudgetBackend],
                                                         own_server: RedisServer, driver: str) -> None:
    b = make(driver=driver)
    r = await b.reserve([C], Decimal("0.10"), ttl=60)
    own_server.kill()
    for op in ("reserve", "settle", "release", "usage"):
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable) as info:
                with anyio.fail_after(5):
                    await call(b, op, r)
            assert stalls.elapsed(t0) < 0.5 + SLACK, (op, time.monotonic() - t0)
        assert isinstance(info.value, BudgetStoreError) and info.value.operation == op
        assert str(info.value).startswith(f"redis unavailable: {op} refused")
        no_secret(info.value)
    await b.aclose()


@pytest.mark.parametrize("op", ["reserve", "settle", "release", "usage"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_hung_server_every_call_ends_by_the_callers_deadline(
        make: Callable[..., RedisBudgetBackend], own_server: RedisServer, driver: str,
        op: str) -> None:
    b = make(driver=driver, operation_timeout_s=30.0, connect_timeout_s=30.0)
    r = await b.reserve([C], Decimal("0.10"), ttl=60)
    own_server.pause()
    try:
        raised: BaseException | None = None
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            with anyio.CancelScope(deadline=anyio.current_time() + 0.5) as scope:
                try:
                    await call(b, op, r)
                except RedisTimeout as exc:
                    raised = exc
            wall = stalls.elapsed(t0)
    finally:
        own_server.resume()
    assert wall <= 0.5 + SLACK, wall
    if raised is None:
        # A reserve stopped at the deadline gives way to the caller's cancellation; usage
        # is not shielded and is cancelled with the caller's scope.
        assert op in ("reserve", "usage") and scope.cancelled_caught
    else:
        assert isinstance(raised, RedisTimeout) and raised.by_deadline, repr(raised)
        no_secret(raised)
    # The server answers again: the backend works at once (no connection left half-read).
    with anyio.fail_after(5):
        (u,) = await b.usage([C])
    assert u.committed + u.reserved <= C.limit
    await b.aclose()


async def test_own_timeout_bounds_a_call_without_deadline(make: Callable[..., RedisBudgetBackend],
                                                          own_server: RedisServer) -> None:
    b = make(operation_timeout_s=0.3, connect_timeout_s=0.3)
    await b.usage([C])
    own_server.pause()
    try:
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(RedisTimeout) as info, anyio.fail_after(5):
                await b.reserve([C], Decimal("0.10"), ttl=60)
            wall = stalls.elapsed(t0)
    finally:
        own_server.resume()
    assert wall <= 0.6 + SLACK, wall
    assert not info.value.by_deadline
    await b.aclose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_fail_open_uses_local_limits_and_replays_once(
        make: Callable[..., RedisBudgetBackend], own_server: RedisServer, driver: str,
        caplog: pytest.LogCaptureFixture) -> None:
    b = make(driver=driver, on_unavailable="fail_open", unavailable_retry_s=0.2)
    shared = await b.reserve([C], Decimal("0.30"), ttl=60)  # held in Redis
    settled = await b.reserve([C], Decimal("0.20"), ttl=60)
    await b.settle(settled, Decimal("0.10"))
    own_server.kill()
    caplog.set_level(logging.WARNING, "squirrel_models_redis")
    async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
        t0 = time.monotonic()
        with anyio.fail_after(5):
            local = [await b.reserve([C], Decimal("0.40"), ttl=60) for _ in range(2)]
            # the same limits, on this process's own spend: 0.80 of 1.00 is held locally
            with pytest.raises(BudgetExceeded):
                await b.reserve([C], Decimal("0.40"), ttl=60)
            (u,) = await b.usage([C])
            assert u.reserved == Decimal("0.80")
            over = await b.settle(local[0], Decimal("0.25"), ledger=LedgerRow(
                "req-local", 1, "p", "p/m", "ok", cost=Decimal("0.25")))
            assert over == 0
            await b.release(local[1])
            # a shared reservation settled while Redis is down: replayed later
            assert await b.settle(shared, Decimal("0.35")) == Decimal("0.05")
        assert stalls.elapsed(t0) < 2.5, stalls
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("redis unreachable" in w for w in warnings) == 1, warnings  # once per outage
    assert all(PASSWORD not in w for w in warnings)
    assert b.deferred == 2

    own_server.start()
    await anyio.sleep(0.25)  # past unavailable_retry_s: Redis is tried again
    with anyio.fail_after(5):
        (u,) = await b.usage([C])
    assert b.deferred == 0
    # 0.10 settled before, 0.25 spent locally, 0.35 of the shared reservation: all counted.
    assert u.committed == Decimal("0.10") + Decimal("0.25") + Decimal("0.35")
    assert u.reserved == 0
    rows = [r for r in await b.rows() if r.request_id == "req-local"]
    assert len(rows) == 1 and rows[0].cost == Decimal("0.25")
    assert any("redis answers again" in r.getMessage() for r in caplog.records)
    # A replayed settle is not counted twice, nor is a repeated one.
    await b.settle(local[0], Decimal("0.25"))
    await b.settle(shared, Decimal("0.35"))
    (u,) = await b.usage([C])
    assert u.committed == Decimal("0.70")
    await b.aclose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_spend_survives_a_crash_with_aof(make: Callable[..., RedisBudgetBackend],
                                               own_server: RedisServer, driver: str) -> None:
    """With ``appendfsync always`` a SIGKILLed server comes back holding every settlement and
    lease it acknowledged; the client reconnects by itself."""
    b = make(driver=driver)
    r = await b.reserve([C], Decimal("0.50"), ttl=60)
    await b.settle(r, Decimal("0.20"))
    held = await b.reserve([C], Decimal("0.30"), ttl=60)
    own_server.kill()
    with pytest.raises(RedisUnavailable):
        await b.usage([C])
    own_server.start()
    with anyio.fail_after(5):
        (u,) = await b.usage([C])
    assert (u.committed, u.reserved) == (Decimal("0.20"), Decimal("0.30"))
    await b.settle(held, Decimal("0.30"))
    (u,) = await b.usage([C])
    assert (u.committed, u.reserved) == (Decimal("0.50"), 0)
    await b.aclose()


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_request_through_the_manager_with_redis_down(
        squirrel_manager: Callable[..., Any], make: Callable[..., RedisBudgetBackend],
        own_server: RedisServer, mode: str) -> None:
    """A request never hangs on a dead Redis: refused with the typed error (fail_closed) or
    answered on local limits (fail_open)."""
    backend = make(on_unavailable=mode)
    card = ModelCard.for_provider("p", "m", provider_type="scripted",
                                  price=Price(Decimal("0.1"), Decimal("0.1")))
    provider = ScriptedProvider("p", [card])
    provider.script("m", Reply("hi"), Reply("hi"))
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}]}},
                          budget_backend=backend)
    async with mm:
        mm.register_model(card, provider)
        await mm.complete(AIRequest.from_prompt("hello", max_tokens=8), timeout=2.0)
        own_server.kill()
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            if mode == "fail_closed":
                with pytest.raises(SquirrelError) as info:
                    await mm.complete(AIRequest.from_prompt("hello", max_tokens=8), timeout=2.0)
                assert isinstance(info.value, RedisUnavailable | DeadlineExceeded), repr(info.value)
            else:
                resp = await mm.complete(AIRequest.from_prompt("hello", max_tokens=8), timeout=2.0)
                assert resp.text == "hi"
            assert stalls.elapsed(t0) < 2.0 + SLACK, stalls


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_a_server_out_of_memory_is_unavailable(make: Callable[..., RedisBudgetBackend],
                                                     mode: str) -> None:
    """Redis refusing writes (``OOM``: over ``maxmemory``; a replica's ``READONLY`` after a
    failover reads the same) cannot do the work, as if it were unreachable."""
    b = make(on_unavailable=mode)
    await b.usage([C])
    await b.execute("limit", "CONFIG", "SET", "maxmemory", "1")
    try:
        if mode == "fail_closed":
            with pytest.raises(RedisUnavailable, match="OutOfMemory"):
                await b.reserve([C], Decimal("0.10"), ttl=60)
        else:
            r = await b.reserve([C], Decimal("0.10"), ttl=60)  # on this process's own limits
            await b.settle(r, Decimal("0.05"))
            assert b.deferred == 1
    finally:
        await b.execute("unlimit", "CONFIG", "SET", "maxmemory", "0")


async def test_fail_open_starts_with_redis_down(squirrel_manager: Any,
                                                make: Callable[..., RedisBudgetBackend],
                                                own_server: RedisServer) -> None:
    """A manager whose start-up finds Redis down serves on local limits with ``fail_open``
    (its start-up reconcile too); with ``fail_closed`` the request gets the typed error."""
    card = ModelCard.for_provider("p", "m", provider_type="scripted",
                                  price=Price(Decimal("0.1"), Decimal("0.1")))
    own_server.kill()
    for mode in ("fail_open", "fail_closed"):
        provider = ScriptedProvider("p", [card])
        provider.default = Reply("hi")
        mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}]}},
                              budget_backend=make(on_unavailable=mode))
        mm.register_model(card, provider)
        async with loop_stalls() as stalls:  # time the loop was kept off the CPU is forgiven
            t0 = time.monotonic()
            if mode == "fail_open":
                resp = await mm.complete(AIRequest.from_prompt("hello", max_tokens=8), timeout=2.0)
                assert resp.text == "hi"
            else:
                with pytest.raises(RedisUnavailable):
                    await mm.complete(AIRequest.from_prompt("hello", max_tokens=8), timeout=2.0)
            assert stalls.elapsed(t0) < 2.0 + SLACK, stalls
        await mm.aclose()


def _row(cost: str) -> LedgerRow:
    from datetime import UTC, datetime

    return LedgerRow("r1", 1, "p", "p/a", "ok", 100, 50, cost=Decimal(cost), scopes=("global",),
                     at=datetime.now(UTC))


async def _clients_in(b: RedisBudgetBackend, command: str) -> int:
    listing = await b.execute("clients", "CLIENT", "LIST")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return text.count(f"cmd={command}")


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_settle_cut_before_it_was_sent_is_run_by_the_next_call(
        make: Callable[..., RedisBudgetBackend], driver: str) -> None:
    """A settlement that waited for a connection of the backend's pool (busy under load) was
    cut by the request's cleanup bound before it was sent: its lease held the worst case
    until it expired (ten minutes), was then released, and the attempt's spend and ledger
    row never reached the budget (seen through the gateway: 0.13 USD of a 0.50 key budget
    held after every request had ended). The backend runs it with its next call: the spend
    committed once, the row written once."""
    b = make(driver=driver, max_connections=1, operation_timeout_s=10.0, connect_timeout_s=10.0)
    watcher = make()
    held = await b.reserve([C], Decimal("0.30"), ttl=600)
    key = "{" + b.key_prefix + "}:test:blocker"
    async with anyio.create_task_group() as tg:
        # the pool's one connection waits in BLPOP until the list gets an element
        tg.start_soon(lambda: b.execute("block", "BLPOP", key, "0", deadline=None))
        with anyio.fail_after(10):
            while not await _clients_in(watcher, "blpop"):
                await anyio.sleep(0.01)
        with anyio.CancelScope(deadline=anyio.current_time() + 0.3), \
                pytest.raises(RedisTimeout) as info:
            await b.settle(held, Decimal("0.20"), ledger=_row("0.20"))
        assert info.value.pending  # the manager leaves its row to the settlement
        await watcher.execute("unblock", "LPUSH", key, "x")
    with anyio.fail_after(10):
        (u,) = await b.usage([C])
    assert (u.committed, u.reserved) == (Decimal("0.20"), 0), u
    assert [r.request_id for r in await b.rows()] == ["r1"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_settle_refused_by_a_killed_server_is_run_when_it_is_back(
        make: Callable[..., RedisBudgetBackend], own_server: RedisServer, driver: str) -> None:
    """Redis killed (``appendonly``: the lease survives) while an attempt ran: its settle was
    refused, and once Redis was back the lease held the worst case until it expired, then
    gave it back without the attempt's spend. The next call settles it; its ledger row is
    left to the manager (which records it itself after such an error), so it is not written
    twice."""
    b = make(driver=driver)
    held = await b.reserve([C], Decimal("0.30"), ttl=600)
    own_server.kill()
    with pytest.raises(RedisUnavailable) as info:
        await b.settle(held, Decimal("0.20"), ledger=_row("0.20"))
    assert not getattr(info.value, "pending", False)
    own_server.start()
    with anyio.fail_after(5):
        (u,) = await b.usage([C])
    assert (u.committed, u.reserved) == (Decimal("0.20"), 0), u
    assert await b.rows() == []
