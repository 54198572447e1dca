"""A hung Redis cannot hold a request past its deadline (issue 12, class 3): the server is
SIGSTOPped (the kernel still accepts connections and takes the commands, nothing answers)
before the reservation, while the upstream answers (the settlement) or when it fails (the
release), and every 1 s-deadline request through the manager still ends within its deadline
plus :data:`BOUND` (the plugin's own timeouts are set far longer, 30 s, so only the
caller's deadline can end the wait), on both drivers, asyncio and trio. Afterwards, with the
server running again: ``committed + reserved <= limit``, the ledger says what was committed,
no row twice; a reservation (or release) the hung server ran after its caller left is undone
by the backend's next call, so nothing stays held right after the server resumes, not only
after ``reservation_ttl``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import BudgetStoreError, ServerError
from squirrel_models.secrets import Secret
from squirrel_models.testing import Fail
from squirrel_models_redis import RedisBudgetBackend, RedisOptions

from ..support import deadline_cases
from ..support.deadline_cases import GLOBAL, TTL, card
from ..support.store_locks import Freeze, LockingProvider
from .redisserver import RedisServer

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)

#: (event loop, driver): redis-py's asyncio client runs on asyncio only; trio uses threads.
LOOPS = pytest.mark.parametrize(("anyio_backend", "driver"),
                                [("asyncio", "async"), ("asyncio", "threads"), ("trio", "threads")],
                                ids=["asyncio-async", "asyncio-threads", "trio-threads"])


@pytest.fixture
async def backend(own_server: RedisServer, prefix: str, driver: str
                  ) -> AsyncIterator[tuple[RedisBudgetBackend, list[float]]]:
    now = [time.time()]
    b = RedisBudgetBackend(RedisOptions(key_prefix=prefix, driver=driver, connect_timeout_s=30.0,
                                        operation_timeout_s=30.0),
                           clock=lambda: now[0], url=Secret(own_server.url, opaque=False))
    yield b, now
    await b.aclose()


async def assert_nothing_held(b: RedisBudgetBackend) -> None:
    audit = await b.audit()
    assert audit["open"] == 0 and audit["mismatched"] == [], audit
    (u,) = await b.usage([GLOBAL])
    assert u.reserved == 0, u


@LOOPS
async def test_a_reserve_the_hung_server_runs_after_its_caller_left_is_undone_at_once(
        own_server: RedisServer, backend: tuple[RedisBudgetBackend, list[float]], prefix: str,
        driver: str) -> None:
    """The reserve reaches the server (a warm connection), the server is hung, the caller
    leaves at its deadline; the server resumes and runs the reserve: another process sees its
    headroom held, and this backend's next call gives it back, long before the lease's ttl."""
    b, _ = backend
    other = RedisBudgetBackend(RedisOptions(key_prefix=prefix), url=Secret(own_server.url,
                                                                           opaque=False))
    pause = Freeze(own_server)
    try:
        await b.open()
        await b.release(await b.reserve([GLOBAL], Decimal("0.01"), ttl=TTL))  # warm
        await pause.lock()
        with anyio.move_on_after(0.5), contextlib.suppress(BudgetStoreError):
            await b.reserve([GLOBAL], Decimal("0.3"), ttl=TTL)
            pytest.fail("a hung server answered")
        await pause.unlock()
        # The server runs the reserve it took (the bug this guards against: held until ttl).
        with anyio.fail_after(10):
            while (await other.usage([GLOBAL]))[0].reserved == 0:
                await anyio.sleep(0.01)
        await assert_nothing_held(b)
        (u,) = await other.usage([GLOBAL])
        assert u.reserved == 0 and u.committed == 0, u
    finally:
        await pause.unlock()
        await other.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("phase", ["reservation", "settlement", "release"])
@LOOPS
async def test_a_hung_server_ends_the_request_by_its_deadline(
        squirrel_manager: Callable[..., Any], own_server: RedisServer,
        backend: tuple[RedisBudgetBackend, list[float]], phase: str, stream: bool,
        driver: str) -> None:
    b, now = backend
    pause = Freeze(own_server)
    p = LockingProvider("p", [card("m")], locker=pause)
    if phase == "release":  # the failed attempt's release (and the retry's reservation)
        p.script("m", *[Fail(ServerError("boom", status_code=500))] * 3)
    try:
        async with deadline_cases.manager(squirrel_manager, b, p, warm=True) as mm:
            if phase == "reservation":
                await pause.lock()
            waited = await deadline_cases.held_request(mm, stream, pause)
            log.info("%s, redis hung: %.3f s", phase, waited)
            assert p.calls["m"] == (0 if phase == "reservation" else 1)
            await deadline_cases.assert_no_overspend(b)
            (u,) = await b.usage([GLOBAL])
            assert u.committed == sum(r.cost for r in await b.rows() if r.cost is not None), u
            if phase != "settlement":
                # A reserve (or release) the hung server ran after its caller left is undone
                # by the next call: the room is back at once, not after reservation_ttl.
                await assert_nothing_held(b)
            # A settlement the server took commits when it resumes, with its ledger row.
            await deadline_cases.assert_every_reservation_ends(b, now)
    finally:
        await pause.unlock()
