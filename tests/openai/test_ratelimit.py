"""Against a server that announces its rate limits (headers) and enforces them (429s): the
router stays under the announced limit and sends the rest to other models, through the
openai plugin and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV
from .mock import card, completion, delta, json_response, provider, sse, stream_response

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=8)


def config(server: FaultyServer, *models: str, **extra: Any) -> dict[str, Any]:
    """Models priced in the given order (cheapest first), so they are ranked in it (latency
    left out of the scores: an observed 30 ms must not rank below an unobserved model)."""
    return {"providers": [{"name": "faulty", "type": "openai", "discover": False,
                           "options": {"base_url": server.base_url, "api_key_env": CANARY_ENV,
                                       "timeout": 2.0},
                           "models": [{"name": m, "price": {"input": str(i + 1),
                                                            "output": str(i + 1)}}
                                      for i, m in enumerate(models)]}],
            "scoring": {"weights": {"latency": 0}}, "timeout": 10.0, **extra}


async def test_the_announced_limit_is_kept_and_the_rest_goes_elsewhere(
        squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    """The cheap model allows 4 requests a minute and says so in its headers; nobody
    configured it. 1 request, then 30 at once: exactly 4 reach it, no 429, the rest go to the
    other model."""
    async with squirrel_manager(config(faulty, "limited:4.60", "ok")) as mm:
        first = await mm.complete(REQUEST)
        assert first.model == "faulty/limited:4.60"
        models: list[str] = []

        async def one() -> None:
            models.append((await mm.complete(REQUEST)).model)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
        assert models.count("faulty/limited:4.60") == 3
        assert models.count("faulty/ok") == 27
        assert faulty.by_model["limited:4.60"] == 4
        assert faulty.limited_429s == 0
        why = mm.rank().excluded["faulty/limited:4.60"]
        assert why.startswith("rpm limit reached on model:faulty/limited:4.60 (announced upstream)")


async def test_a_429_with_retry_after_leaves_the_model_out_until_then(
        squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    """A model that answers 429 with Retry-After is asked once, not on every request."""
    async with squirrel_manager(config(faulty, "rate-limit:30", "ok")) as mm:
        for _ in range(10):
            resp = await mm.complete(REQUEST)
            assert resp.model == "faulty/ok"
        assert faulty.by_model["rate-limit:30"] == 1
        assert mm.rank().excluded["faulty/rate-limit:30"].startswith(
            "the upstream asked to wait (Retry-After), room again in ")


async def test_out_of_credit_is_asked_once(squirrel_manager: Any, faulty: FaultyServer,
                                           canary_env: str) -> None:
    async with squirrel_manager(config(faulty, "quota", "ok")) as mm:
        for _ in range(5):
            assert (await mm.complete(REQUEST)).model == "faulty/ok"
        assert faulty.by_model["quota"] == 1
        assert mm.rank().excluded["faulty/quota"].startswith(
            "out of credit upstream (HTTP 429: insufficient quota)")


async def test_a_window_that_resets_lets_the_model_back_in(
        squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    """2 requests per second, 12 requests over about 3 s: never a 429, and the limited model
    takes its share again after each reset."""
    async with squirrel_manager(config(faulty, "limited:2.1", "ok")) as mm:
        models = []
        for _ in range(12):
            models.append((await mm.complete(REQUEST)).model)
            await anyio.sleep(0.25)
        assert faulty.limited_429s == 0
        assert models.count("faulty/limited:2.1") >= 4  # at least two windows' worth
        assert "faulty/ok" in models


async def test_a_stream_hands_over_its_headers_too(
        squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    async with squirrel_manager(config(faulty, "limited:2.60", "ok")) as mm:
        models = []
        for _ in range(5):
            async with mm.stream(REQUEST) as s:
                async for _ in s:
                    pass
            models.append(s.model.id)
        assert models == ["faulty/limited:2.60"] * 2 + ["faulty/ok"] * 3
        assert faulty.limited_429s == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("headers", [
    {"ratelimit": "limit=" + "9" * 400 + ", remaining=1"},
    {"ratelimit": '"p";r=' + "9" * 400, "ratelimit-policy": '"p";q=1;w=60'},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "inf"},
    {"retry-after": "nan"},
])
async def test_an_answer_with_absurd_rate_limit_numbers_is_the_answer(
        stream: bool, headers: dict[str, str]) -> None:
    """Header values that do not parse are ignored: 400 digits raised OverflowError out of the
    provider, so an answer the upstream had given (and billed) was thrown away."""
    usage = {"prompt_tokens": 5, "completion_tokens": 2}

    def answer(_: Any) -> Any:
        if stream:
            resp = stream_response(sse(delta("Hello!"), delta(None, "stop")))
            resp.headers.update(headers)
            return resp
        return json_response(completion(usage=usage), headers=headers)

    p = provider(answer)
    if stream:
        chunks = [c async for c in p.stream(card(), REQUEST)]
        assert "".join(c.text for c in chunks) == "Hello!"
        limits = [c.rate_limits for c in chunks if c.rate_limits is not None]
    else:
        got = await p.complete(card(), REQUEST)
        assert got.text == "Hello!" and got.usage.output_tokens == 2
        limits = [got.rate_limits] if got.rate_limits is not None else []
    for lim in limits:
        assert lim.requests_reset is None and lim.retry_after is None
