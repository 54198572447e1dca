"""Every token a server says it billed, or sends, is charged, through a real server on
127.0.0.1 and a budget.

- ``total_tokens`` above ``prompt_tokens + completion_tokens``: the parts left tokens out.
  OpenAI-compatible proxies in front of Gemini send ``completion_tokens`` without the model's
  thoughts and ``total_tokens`` with them (prompt 20, completion 151, total 553: 382 billed
  tokens missing); others count the reasoning or cached tokens apart. Before, the parts alone
  were charged: the thoughts cost $0.
- Reasoning sent apart from the answer (``reasoning_content``, ``reasoning``) by a server that
  reports no usage (the llama.cpp server's streams): generated and billed output. Before, only
  the visible answer was counted: a model that thought for a thousand tokens was charged two.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest, MidStreamError, ModelManager

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"  # tiktoken knows it: counts are exact, so the tests can say how many
PRICE = {"input": "1", "output": "10", "cached_input": "0.1"}
REQUEST = AIRequest.from_prompt("Think, then answer: how many tokens is this?", max_tokens=4000)
THOUGHT = "First I consider what a token is, then I count them one by one. " * 20


def _config(server: FaultyServer) -> dict[str, Any]:
    return {"providers": [{"name": "up", "type": "openai", "discover": False,
                           "options": {"base_url": server.base_url, "api_key_env": CANARY_ENV},
                           "models": [{"name": MODEL, "price": PRICE, "context_window": 128_000}]}],
            "budget": {"limits": [{"scope": "global", "limit": "100"}]}}


def _answer(usage: Any = None, content: str = "Eleven.", **message: Any) -> bytes:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion", "model": MODEL, "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": content, **message}}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def _stream(events: list[dict[str, Any]], *, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def _delta(**delta: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


def _cost(prompt: int, output: int, cached: int = 0) -> Decimal:
    return ((prompt - cached) * Decimal(PRICE["input"]) + cached * Decimal(PRICE["cached_input"])
            + output * Decimal(PRICE["output"])) / 1_000_000


async def _committed(manager: ModelManager) -> Decimal:
    (state,) = await manager.tokens.check_budget(manager.models[f"up/{MODEL}"])
    assert state.reserved == 0
    return state.committed


def _tokens(text: str) -> int:
    import tiktoken

    return len(tiktoken.get_encoding("o200k_base").encode(text))


# (usage as sent, (input, output, cached) charged)
TOTALS = [
    # Gemini's thoughts through a proxy: only the total holds them (any-llm #1290)
    ({"prompt_tokens": 20, "completion_tokens": 151, "total_tokens": 553}, (20, 533, 0)),
    # the same with the thoughts named, fewer than the visible answer: counted apart
    ({"prompt_tokens": 20, "completion_tokens": 151, "total_tokens": 271,
      "completion_tokens_details": {"reasoning_tokens": 100}}, (20, 251, 0)),
    # a gap as large as the cached tokens: charged as output, never less than it may cost
    ({"prompt_tokens": 900, "completion_tokens": 10, "total_tokens": 1010,
      "prompt_tokens_details": {"cached_tokens": 100}}, (900, 110, 100)),
    # OpenAI's own convention, total consistent: as reported
    ({"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
      "prompt_tokens_details": {"cached_tokens": 800}}, (1000, 10, 800)),
    # a total below the parts: the parts are billed
    ({"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 5}, (30, 10, 0)),
]


@pytest.mark.parametrize(("usage", "charged"), TOTALS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_the_total_a_server_reports_is_charged(faulty: FaultyServer, canary_env: str,
                                                     usage: dict[str, Any],
                                                     charged: tuple[int, int, int], stream: bool) -> None:
    if stream:
        faulty.serve(MODEL, _stream([_delta(role="assistant", content="Eleven."),
                                     {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                                     {"choices": [], "usage": usage}]), content_type="text/event-stream")
    else:
        faulty.serve(MODEL, _answer(usage))
    async with ModelManager(_config(faulty)) as manager:
        if stream:
            async with manager.stream(REQUEST) as s:
                async for _ in s:
                    pass
            response = s.response
            assert response is not None
        else:
            response = await manager.complete(REQUEST)
        prompt, output, cached = charged
        assert (response.usage.input_tokens, response.usage.output_tokens,
                response.usage.cached_tokens) == charged
        assert response.usage.source == "reported"
        assert response.cost == _cost(prompt, output, cached)
        assert await _committed(manager) == response.cost
        (row,) = [r for r in await manager.budget_backend.rows() if r.outcome == "ok"]
        assert (row.input_tokens, row.output_tokens, row.cost) == (prompt, output, response.cost)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_without_usage_is_counted_as_output(faulty: FaultyServer, canary_env: str,
                                                            field: str) -> None:
    faulty.serve(MODEL, _answer(content="Eleven.", **{field: THOUGHT}))
    async with ModelManager(_config(faulty)) as manager:
        response = await manager.complete(REQUEST)
        assert response.text == "Eleven."
        assert response.usage.source == "counted"
        assert response.usage.output_tokens == _tokens(THOUGHT + "Eleven.")
        assert await _committed(manager) == response.cost == _cost(response.usage.input_tokens,
                                                                   response.usage.output_tokens)


async def test_vllm_sends_the_reasoning_twice_and_it_is_counted_once(faulty: FaultyServer,
                                                                     canary_env: str) -> None:
    faulty.serve(MODEL, _answer(content="Eleven.", reasoning_content=THOUGHT, reasoning=THOUGHT))
    async with ModelManager(_config(faulty)) as manager:
        response = await manager.complete(REQUEST)
    assert response.usage.output_tokens == _tokens(THOUGHT + "Eleven.")


async def test_a_streamed_reasoning_without_usage_is_counted_as_output(faulty: FaultyServer,
                                                                       canary_env: str) -> None:
    words = THOUGHT.split(" ")
    events = [_delta(role="assistant")] + [_delta(reasoning_content=w + " ") for w in words]
    events += [_delta(content="Eleven."), {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    faulty.serve(MODEL, _stream(events), content_type="text/event-stream")
    async with ModelManager(_config(faulty)) as manager:
        async with manager.stream(REQUEST) as s:
            text = "".join([c.text async for c in s])
        assert text == "Eleven." and s.response is not None
        thought = "".join(w + " " for w in words)
        assert s.response.usage.output_tokens == _tokens(thought + "Eleven.")
        assert await _committed(manager) == s.response.cost


async def test_a_stream_cut_after_its_reasoning_is_charged_the_reasoning(faulty: FaultyServer,
                                                                         canary_env: str) -> None:
    events = [_delta(reasoning_content=THOUGHT), _delta(content="Elev")]
    faulty.serve(MODEL, _stream(events, done=False), content_type="text/event-stream")
    async with ModelManager(_config(faulty)) as manager:
        with pytest.raises(MidStreamError) as info:
            async with manager.stream(REQUEST) as s:
                async for _ in s:
                    pass
        usage = info.value.usage
        assert usage is not None and usage.output_tokens == _tokens(THOUGHT + "Elev")
        assert await _committed(manager) == _cost(usage.input_tokens, usage.output_tokens)


@pytest.mark.parametrize(("prompt", "rates"), [(272_001, ("5", "22.5")), (272_000, ("2.5", "15"))])
async def test_a_tiered_catalogue_model_is_charged_its_tier(faulty: FaultyServer, canary_env: str,
                                                            prompt: int, rates: tuple[str, str]) -> None:
    """gpt-5.4 costs twice its base input price for a prompt above 272,000 tokens (genai-prices'
    data): the card the catalogue gives it says so, and the charge follows."""
    faulty.serve("gpt-5.4", _answer({"prompt_tokens": prompt, "completion_tokens": 100}))
    config = {"providers": [{"name": "up", "type": "openai", "discover": False,
                             "options": {"base_url": faulty.base_url, "api_key_env": CANARY_ENV,
                                         "prices_from": "openai"},
                             "models": [{"name": "gpt-5.4"}]}],
              "budget": {"limits": [{"scope": "global", "limit": "100"}]}}
    async with ModelManager(config) as manager:
        price = manager.models["up/gpt-5.4"].price
        assert price is not None and [t.above for t in price.tiers] == [272_000]
        response = await manager.complete(REQUEST)
        (state,) = await manager.tokens.check_budget(manager.models["up/gpt-5.4"])
    expected = (prompt * Decimal(rates[0]) + 100 * Decimal(rates[1])) / 1_000_000
    assert response.cost == expected and state.committed == expected
