"""``[rate_limits] store = "redis"`` end to end: two managers (two instances) share one rpm
limit through Redis, so together they admit no more than it, and the next request goes to
the other model at once."""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest, ModelCard, Price
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import Reply, ScriptedPlugin, ScriptedProvider

from .redisserver import RedisServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_RL_URL"


async def test_two_instances_share_one_rpm_limit(squirrel_manager: Any, redis_server: RedisServer,
                                                 prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, redis_server.url)
    cfg = {"rate_limits": {"store": "redis", "options": {"url_env": ENV, "key_prefix": prefix},
                           "limits": [{"scope": "model:p/a", "rpm": 3}]}}
    cards = [ModelCard.for_provider("p", m, provider_type="scripted", price=Price(1, 2 if m == "a" else 9))
             for m in ("a", "b")]
    managers, providers = [], []
    for _ in range(2):
        pm = PluginManager()
        pm.register(ScriptedPlugin(), "scripted")
        p = ScriptedProvider("p", cards)
        p.default = Reply("ok")
        managers.append(squirrel_manager(cfg, plugins=pm))
        providers.append(p)
    for mm, p in zip(managers, providers, strict=True):
        for c in cards:
            mm.register_model(c, p)  # before start-up, which checks the limit's scope
    models = []
    try:
        for i in range(6):
            mm = managers[i % 2]
            models.append((await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))).model)
    finally:
        for mm in managers:
            await mm.aclose()
    # p/a is cheaper, so preferred, until the shared limit of 3 per minute is reached
    assert models.count("p/a") == 3, models
    assert sum(p.calls.get("a", 0) for p in providers) == 3
    assert models[3:] == ["p/b"] * 3


async def test_a_worst_case_above_a_shared_tpm_limit_is_refused_for_good(
        squirrel_manager: Any, redis_server: RedisServer, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose worst case is above the whole shared tpm limit is RateLimitTooSmall
    (was a RateLimitExceeded, a 429 at the gateway, retried for ever), refused before Redis is
    asked: nothing admitted there, and the other model answers."""
    from squirrel_models import RateCharge, RateLimitExceeded, RateLimitTooSmall

    monkeypatch.setenv(ENV, redis_server.url)
    cfg = {"rate_limits": {"store": "redis", "options": {"url_env": ENV, "key_prefix": prefix},
                           "limits": [{"scope": "model:p/a", "tpm": 10}, {"scope": "key:*", "tpm": 10}]}}
    cards = [ModelCard.for_provider("p", m, provider_type="scripted", price=Price(1, 2 if m == "a" else 9),
                                    **({"max_output_tokens": 4} if m == "b" else {}))
             for m in ("a", "b")]
    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    p = ScriptedProvider("p", cards)
    p.default = Reply("ok")
    mm = squirrel_manager(cfg, plugins=pm)
    for c in cards:
        mm.register_model(c, p)
    try:
        resp = await mm.complete(AIRequest.from_prompt("hi there", max_tokens=20, budget_key="k"))
        assert resp.model == "p/b"  # its output cap of 4 fits the key's 10 tokens
        assert [a.model_id for a in resp.attempts] == ["p/b"]  # p/a left out by selection:
        assert "tpm limit 10 on" in resp.decision.excluded["p/a"]
        (used,) = await mm.limiter.store.usage([RateCharge("model:p/a", "tpm", 10)])
        assert used.used == 0 and p.calls.get("a", 0) == 0
        with pytest.raises(RateLimitTooSmall) as info:
            await mm.complete(AIRequest.from_prompt("hi there " * 20, max_tokens=20, budget_key="k"))
        assert not isinstance(info.value, RateLimitExceeded) and "tpm limit 10 on" in str(info.value)
    finally:
        await mm.aclose()
