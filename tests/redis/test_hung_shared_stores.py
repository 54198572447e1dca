"""Everything shared on one Redis that hangs: the budget, the rate limits (``[rate_limits] store
= "redis"``) and the circuit breakers' cooldowns (``[circuit_breaker] shared = "redis"``), each
with its own timeouts far longer (30 s) than the request's 1 s deadline. The server is
SIGSTOPped before the request, or while the upstream answers: complete and stream still end
by the deadline (plus :data:`BOUND`) with a typed error, and once the server resumes the budget
holds and every reservation ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions

from ..support import deadline_cases
from ..support.deadline_cases import GLOBAL, TTL, card
from ..support.store_locks import Freeze, LockingProvider
from .redisserver import RedisServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_SHARED_URL"
LONG = {"connect_timeout_s": 30.0, "operation_timeout_s": 30.0}


class Unlocked:
    async def lock(self) -> None:
        pass


@pytest.fixture
async def manager(squirrel_manager: Callable[..., Any], own_server: RedisServer, prefix: str,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, LockingProvider, list[float]]]:
    monkeypatch.setenv(ENV, own_server.url)
    now = [time.time()]
    backend = RedisBudgetBackend(RedisOptions(key_prefix=prefix, **LONG), clock=lambda: now[0],
                                 url=Secret(own_server.url, opaque=False))
    shared = {"url_env": ENV, "key_prefix": prefix, **LONG}
    provider = LockingProvider("p", [card("m")], locker=Unlocked())
    mm = squirrel_manager(
        {"budget": {"limits": [{"scope": "global", "limit": "1"}], "reservation_ttl": TTL},
         "rate_limits": {"store": "redis", "options": shared,
                         "limits": [{"scope": "global", "rpm": 1000, "max_concurrent": 10}]},
         "circuit_breaker": {"shared": "redis", "shared_options": shared, "sync_interval": 0.05},
         "timeout": 2.0, "fallback": {"options": {"retry": {"base_delay": 0.001}}}},
        budget_backend=backend)
    mm.register_model(provider.models[0], provider)
    try:
        async with mm:
            # warm: every store's keys and connections exist
            await mm.complete(AIRequest.from_prompt("warm", max_tokens=5))
            yield mm, provider, now
    finally:
        own_server.resume()
        await backend.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("phase", ["before", "during"])
async def test_a_hung_redis_holding_every_shared_store_ends_the_request_by_its_deadline(
        manager: tuple[Any, LockingProvider, list[float]], own_server: RedisServer, phase: str,
        stream: bool) -> None:
    mm, provider, now = manager
    freeze = Freeze(own_server)
    if phase == "before":
        await freeze.lock()
    else:
        provider.locker = freeze
    calls = provider.calls["m"]
    await deadline_cases.held_request(mm, stream, freeze)
    assert provider.calls["m"] - calls == (0 if phase == "before" else 1)
    b = mm.budget_backend
    await deadline_cases.assert_no_overspend(b)
    await deadline_cases.assert_every_reservation_ends(b, now)
    (u,) = await b.usage([GLOBAL])
    assert Decimal(0) < u.committed  # the warm-up's answer at least
