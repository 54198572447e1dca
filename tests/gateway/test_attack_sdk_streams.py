"""The gateway's event stream as the official openai SDK reads it, when the upstream's stream
breaks: before its first chunk the gateway falls back and the SDK never knows; after it the
SDK gets the chunks that came and then an error (never a replay, never a silent end), and
the budget is charged for what was received, nothing left reserved."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from ..support.faulty_server import ANSWER, FaultyServer
from .conftest import TEAM_KEY, UPSTREAM_ENV, UPSTREAM_KEY, budget_state, faulty_config, gateway

HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def two_model_gw(faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    cfg = faulty_config(faulty, aliases={"cheap": "faulty/ok", "pair": ["faulty/ok", "faulty/slow:0.2"]})
    cfg["fallback"] = {"max_attempts": 2, "strategies": ["next_candidate"]}
    with gateway(cfg) as thread:
        yield thread


@pytest.mark.parametrize("broken", ["truncate", "reset-stream", "stream-error", "malformed-stream"])
def test_a_stream_broken_after_its_first_chunk_reaches_the_sdk_as_an_error(
        openai_module: Any, faulty: FaultyServer, two_model_gw: Any, canary_env: str, broken: str) -> None:
    faulty.script("ok", broken)
    c = openai_module.OpenAI(base_url=two_model_gw.base_url, api_key=TEAM_KEY, max_retries=0)
    got: list[str] = []
    with pytest.raises(openai_module.APIError):
        for chunk in c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=32, stream=True):
            got.extend(ch.delta.content or "" for ch in chunk.choices)
    committed, reserved, open_ = budget_state(two_model_gw, "team-a")
    assert faulty.requests == 1  # never replayed, on this model or another
    assert reserved == 0 and open_ == 0
    if got:
        assert committed > 0  # what was received is charged


@pytest.mark.parametrize("broken", ["reset", "close", "error:500", "malformed", "auth"])
def test_a_stream_broken_before_its_first_chunk_falls_back_unseen(
        openai_module: Any, faulty: FaultyServer, two_model_gw: Any, canary_env: str, broken: str) -> None:
    faulty.script("ok", broken)
    c = openai_module.OpenAI(base_url=two_model_gw.base_url, api_key=TEAM_KEY, max_retries=0)
    stream = c.chat.completions.create(model="pair", messages=HI, max_tokens=32, stream=True)
    text = "".join(ch.delta.content or "" for chunk in stream for ch in chunk.choices)
    assert faulty.behaviours == [broken, "slow:0.2"] and text == ANSWER
    _, reserved, open_ = budget_state(two_model_gw, "team-a")
    assert reserved == 0 and open_ == 0


def test_the_gateway_duration_histogram_resolves_a_request(openai_module: Any, faulty: FaultyServer,
                                                           two_model_gw: Any, canary_env: str) -> None:
    """squirrel.gateway.request.duration has buckets below a second: with the SDK's default
    ones (0, 5, 10 ... 10,000 s) every request fell in the first."""
    c = openai_module.OpenAI(base_url=two_model_gw.base_url, api_key=TEAM_KEY, max_retries=0)
    list(c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8, stream=True))
    text = httpx.get(two_model_gw.base_url.removesuffix("/v1") + "/metrics").text
    bounds = {float(m) for m in re.findall(
        r'^squirrel_gateway_request_duration_seconds_bucket\{[^}]*le="([0-9.e+-]+)"', text, re.M)}
    assert bounds and min(bounds) <= 0.01 and {0.1, 1.0} <= bounds
