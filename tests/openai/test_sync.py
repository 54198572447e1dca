"""``SyncModelManager`` with the openai plugin's real HTTP engine (aiohttp on the asyncio loop,
httpx on trio) against a real server on 127.0.0.1, from several threads: answers, streams,
typed errors, and a close that leaves no unclosed session, connection or warning behind."""

from __future__ import annotations

import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    ModelRequirements,
    RateLimited,
    ServerError,
    SquirrelError,
    SyncModelManager,
)

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV


def config(faulty: FaultyServer) -> dict[str, Any]:
    return {"providers": [{"name": "up", "type": "openai", "discover": False,
                           "options": {"base_url": faulty.base_url, "api_key_env": CANARY_ENV},
                           "models": [{"name": "ok", "price": {"input": "1", "output": "2"}},
                                      {"name": "error:500", "price": {"input": "1", "output": "2"}},
                                      {"name": "rate-limit:0.1", "price": {"input": "1", "output": "2"}}]}],
            "fallback": {"max_attempts": 1},
            "budget": {"limits": [{"scope": "global", "limit": "5"}]}}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_threads_through_real_http(faulty: FaultyServer, canary_env: str, backend: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ok = ModelRequirements(models={"up/ok"})
    with SyncModelManager(config(faulty), backend=backend) as mm:
        def one(i: int) -> str:
            req = AIRequest.from_prompt(f"hello {i}", max_tokens=16)
            if i % 3 == 0:
                with mm.stream(req, ok) as s:
                    text = "".join(c.text for c in s)
                assert s.response is not None and s.response.cost is not None
                return text
            return mm.complete(req, ok).text

        with ThreadPoolExecutor(6) as pool:
            texts = list(pool.map(one, range(24)))
        assert all(t.startswith("Hello from the faulty server") for t in texts)
        assert faulty.requests == 24
        with pytest.raises(ServerError) as err:
            mm.complete(AIRequest.from_prompt("x", max_tokens=4), ModelRequirements(models={"up/error:500"}))
        assert err.value.status_code == 500
        with pytest.raises(RateLimited):
            mm.complete(AIRequest.from_prompt("x", max_tokens=4), ModelRequirements(models={"up/rate-limit:0.1"}))
    assert mm.closed
    with pytest.raises(SquirrelError):
        mm.complete(AIRequest.from_prompt("x"))
    gc.collect()  # an unclosed aiohttp session or connector would warn (an error here) or log
    assert not [r for r in caplog.records if "nclosed" in r.getMessage()]
    assert not [t for t in threading.enumerate() if t.name == "squirrel-models-loop"]
