"""The gateway over shared stores on a real Redis server that dies or hangs mid-traffic: every
request ends within its deadline in OpenAI's error JSON with a 503 naming the store (was a
500 without a code for the rate-limit store), and once Redis answers again the key's limits
have all their room: no concurrency slot or reservation is left held by the requests the
outage cut (a lease the resumed server admitted after its caller left held its slot for the
lease's ttl, ten minutes, and the key got 429 for every request meanwhile)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest
from squirrel_models.budget import limit_charges
from squirrel_models.secrets import Secret
from squirrel_models_gateway import GatewayThread, build, hash_key
from squirrel_models_redis import RedisBudgetBackend, RedisOptions

from ..redis.redisserver import PASSWORD, RedisServer, find_server
from ..support import secret_scanner
from ..support.faulty_server import FaultyServer, faulty_server
from ..support.stalls import runqueue_wait

KEY = secret_scanner.canary("sqk-7c2e9a4d1b8f3065e2a1")
UPSTREAM = secret_scanner.canary("sk-3e8b1d6f9a2c4e70b5d8")
secret_scanner.canary(PASSWORD)
TIMEOUT = 3.0
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = find_server()
    if binary is None:
        pytest.skip("no redis-server or valkey-server on this machine")
    server = RedisServer(binary)
    server.start()
    yield server
    server.remove()


@pytest.fixture
def upstream() -> Iterator[FaultyServer]:
    with faulty_server(("ok",)) as server:
        yield server


def config(faulty: FaultyServer) -> dict[str, Any]:
    redis = {"url_env": "SQUIRREL_TEST_GW_REDIS", "connect_timeout_s": 0.5,
             "operation_timeout_s": 0.5}
    return {
        "providers": [{"name": "faulty", "type": "openai", "discover": False,
                       "options": {"base_url": faulty.base_url, "api_key_env": "SQUIRREL_TEST_GW_UP",
                                   "timeout": 5.0, "stream_usage": True},
                       "models": [{"name": "ok", "context_window": 4096, "max_output_tokens": 64,
                                   "price": {"input": "1000", "output": "1000"},
                                   "features": ["streaming"]}]}],
        "fallback": {"max_attempts": 1},
        "timeout": TIMEOUT,
        "budget": {"backend": "redis",
                   "options": {**redis, "key_prefix": f"b{uuid.uuid4().hex[:8]}"},
                   "limits": [{"scope": "key:team-a", "period": "day", "limit": "5"}]},
        "rate_limits": {"store": "redis",
                        "options": {**redis, "key_prefix": f"r{uuid.uuid4().hex[:8]}"},
                        "limits": [{"scope": "key:*", "rpm": 1000, "max_concurrent": 1}]},
        "gateway": {"port": 0, "keys": [{"name": "team-a", "sha256": hash_key(KEY)}]},
    }


def ask(gw: GatewayThread, stream: bool) -> httpx.Response:
    r = httpx.post(gw.base_url + "/chat/completions", timeout=30,
                   json={"model": "faulty/ok", "messages": HI, "max_tokens": 8, "stream": stream},
                   headers={"Authorization": f"Bearer {KEY}"})
    secret_scanner.collect(r.text, *(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def off_cpu(gw: GatewayThread) -> float:
    """Seconds the gateway's thread and this one have waited for a CPU so far."""
    return runqueue_wait(gw.thread.native_id) + runqueue_wait()


def reserved(gw: GatewayThread, url: str) -> Any:
    """What the key's budget holds reserved, read by a backend of this test's own (the
    gateway's is bound to its event loop)."""
    cfg = gw.app.state.gateway.manager.config.budget
    charges = limit_charges(cfg.limits, budget_key="team-a", now=datetime.now(UTC))

    async def read() -> Any:
        backend = RedisBudgetBackend(RedisOptions(key_prefix=cfg.options["key_prefix"]),
                                     url=Secret(url, opaque=False))
        try:
            return sum(u.reserved for u in await backend.usage(charges))
        finally:
            await backend.aclose()

    return anyio.run(read)


@pytest.mark.parametrize("outage", ["killed", "hung"])
def test_redis_down_mid_traffic_is_a_503_and_leaves_nothing_held(
        redis_server: RedisServer, upstream: FaultyServer, monkeypatch: pytest.MonkeyPatch,
        outage: str) -> None:
    monkeypatch.setenv("SQUIRREL_TEST_GW_REDIS", redis_server.url)
    monkeypatch.setenv("SQUIRREL_TEST_GW_UP", UPSTREAM)
    app, gw_config = build(config(upstream))
    with GatewayThread(app, gw_config) as gw:
        for stream in (False, True):
            assert ask(gw, stream).status_code == 200
        if outage == "killed":
            redis_server.kill()
        else:
            redis_server.pause()
        try:
            for stream in (False, True, False):
                t0, queued = time.monotonic(), off_cpu(gw)
                r = ask(gw, stream)
                # the deadline and SEND_GRACE, less the time the gateway's thread and this one
                # waited for a CPU (the kernel's count): a loaded machine's, not the gateway's
                took, stalled = time.monotonic() - t0, off_cpu(gw) - queued
                assert took - stalled < TIMEOUT + 1.0, (took, stalled)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] in ("rate_limit_store_unavailable",
                                                     "budget_store_unavailable"), r.text
        finally:
            if outage == "killed":
                redis_server.start()
            else:
                redis_server.resume()
        # Redis answers again: the one concurrency slot of the key is free at once, request
        # after request, and no budget reservation stays held
        for stream in (False, True, False, True):
            r = ask(gw, stream)
            assert r.status_code == 200, r.text
        assert reserved(gw, redis_server.url) == 0
        assert gw.app.state.gateway.in_flight == 0
