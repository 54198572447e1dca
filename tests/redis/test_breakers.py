"""Circuit-breaker cooldowns shared on Redis (``[circuit_breaker] shared = "redis"``): a model
that failed on one instance cools down on the others; holds are dated by the server's clock."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelCard, Price, ServerError
from squirrel_models.plugins import PluginManager
from squirrel_models.secrets import Secret
from squirrel_models.testing import Fail, Reply, ScriptedPlugin, ScriptedProvider
from squirrel_models_redis import RedisBreakerStore, RedisOptions

from .redisserver import RedisServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_BREAKER_URL"


def cards() -> list[ModelCard]:
    return [ModelCard.for_provider("p", m, provider_type="scripted",
                                   price=Price(1, 2)) for m in ("a", "b")]


async def test_a_model_that_failed_on_one_instance_cools_down_on_all(
        squirrel_manager: Any, redis_server: RedisServer, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, redis_server.url)
    cfg = {"circuit_breaker": {"failure_threshold": 1, "base_cooldown": 30, "max_cooldown": 60,
                               "shared": "redis", "sync_interval": 0.05,
                               "shared_options": {"url_env": ENV, "key_prefix": prefix}},
           "fallback": {"max_attempts": 2}}
    instances = []
    for i in range(3):
        pm = PluginManager()
        pm.register(ScriptedPlugin(), "scripted")
        p = ScriptedProvider("p", cards())
        p.default = Reply(f"ok {i}")
        if i == 0:
            p.script("a", Fail(ServerError("down", status_code=500)))
        instances.append((squirrel_manager(cfg, plugins=pm), p))
    async with instances[0][0] as m0, instances[1][0] as m1, instances[2][0] as m2:
        for mm, (_, p) in zip((m0, m1, m2), instances, strict=True):
            for c in p.models:
                mm.register_model(c, p)
        first = await m0.complete(AIRequest.from_prompt("hi", max_tokens=5))
        assert first.model == "p/b" and instances[0][1].calls["a"] == 1
        await anyio.sleep(0.06)
        for mm, (_, p) in ((m1, instances[1]), (m2, instances[2])):
            resp = await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
            assert resp.model == "p/b"  # p/a cools down here too: never called
            assert p.calls.get("a", 0) == 0
            assert 25 < mm.breakers.retry_in("p/a") <= 30


async def test_holds_are_dated_by_one_clock(redis_server: RedisServer, prefix: str) -> None:
    """Two instances whose clocks disagree by an hour agree on how long a hold lasts: the
    store dates it (here each passes its own skewed clock; by default the server's)."""
    now = [1_900_000_000.0]
    a = RedisBreakerStore(RedisOptions(key_prefix=prefix), clock=lambda: now[0],
                          url=Secret(redis_server.url, opaque=False))
    await a.publish("p/m", 10.0)
    await a.publish("p/m", 4.0)  # a shorter hold does not shorten it
    assert await a.fetch() == {"p/m": pytest.approx(10.0)}
    now[0] += 11
    assert await a.fetch() == {}  # over, and forgotten
    server_clock = RedisBreakerStore(RedisOptions(key_prefix=prefix),
                                     url=Secret(redis_server.url, opaque=False))
    await server_clock.publish("p/x", 5.0)
    (left,) = (await server_clock.fetch()).values()
    assert 4.5 < left <= 5.0
    await a.aclose()
    await server_clock.aclose()


@pytest.mark.parametrize(("table", "field"), [
    ({"circuit_breaker": {"shared_options": {"url_env": ENV}}}, "circuit_breaker.shared_options"),
    ({"circuit_breaker": {"shared": "redis",
                          "shared_options": {"url_env": ENV, "on_unavailable": "fail_open"}}},
     "circuit_breaker.shared_options.on_unavailable"),
    ({"circuit_breaker": {"shared": "redis",
                          "shared_options": {"url_env": ENV, "ledger_retention_days": 7}}},
     "circuit_breaker.shared_options.ledger_retention_days"),
    ({"rate_limits": {"store": "redis", "options": {"url_env": ENV, "ledger_retention_days": 7}}},
     "rate_limits.options.ledger_retention_days"),
])
def test_options_that_would_do_nothing_are_refused_naming_them(
        squirrel_manager: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        table: dict[str, Any], field: str) -> None:
    """Taken silently before: ``shared_options`` without ``shared`` (each instance kept its
    own breakers while the table seemed to share them), and options of the redis budget that
    the other stores never read (``on_unavailable`` on advisory breaker holds, a ledger
    retention on stores without a ledger)."""
    from squirrel_models.errors import ConfigError

    monkeypatch.setenv(ENV, redis_server.url)
    with pytest.raises(ConfigError) as info:
        squirrel_manager(table)
    assert info.value.field == field, info.value
