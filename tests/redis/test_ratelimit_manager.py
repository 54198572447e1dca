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
