"""A ModelManager with the Redis budget, made and used before ``os.fork()``, used in the
child on an event loop of its own while the parent goes on: each process talks to the
server on connections of its own, and the budget holds every request of both once.

Before: with the asyncio driver the child's first budget call raised RuntimeError ("...
attached to a different loop"), not a SquirrelError: the client and its connections were
the parent's. (redis-py's blocking pool checks the process id itself.)"""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest
from squirrel_models.manager import ModelManager

from tests.support.forked import across_a_fork

from .redisserver import RedisServer

URL_ENV = "SQUIRREL_TEST_REDIS_FORK_URL"
REQ = AIRequest.from_prompt("hi", max_tokens=10)
N = 15


@pytest.mark.parametrize("driver", ["async", "threads"])
def test_parent_and_forked_child_budget_on_their_own_connections(
        redis_server: RedisServer, prefix: str, squirrel_plugins: Any, monkeypatch: pytest.MonkeyPatch,
        driver: str) -> None:
    monkeypatch.setenv(URL_ENV, redis_server.url)
    cfg = {"providers": [{"name": "p", "type": "scripted",
                          "options": {"models": ["a"], "reply": "one two three"},
                          "models": [{"name": "a", "price": {"input": "1000", "output": "1000"}}]}],
           "budget": {"backend": "redis",
                      "options": {"url_env": URL_ENV, "key_prefix": prefix, "driver": driver,
                                  "max_connections": 2},
                      "limits": [{"scope": "global", "limit": "100"}]}}
    mm = ModelManager(cfg, plugins=squirrel_plugins)
    usage, cost = across_a_fork(mm, REQ, "one two three", N, lambda run: (
        run(mm.tokens.check_budget(mm.models["p/a"]))[0], run(mm.complete(REQ)).cost))
    expected = cost * (2 + 2 * N + 1)
    assert usage.reserved == 0
    assert usage.committed + expected / (2 + 2 * N + 1) == expected  # every request once
