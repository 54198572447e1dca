"""Token counts that are guesses say so, from the answer to ``squirrel usage``: a stream that
carries no usage (the llama.cpp server's) is counted by us, with tiktoken where the model's
encoding is known (``counted``, the same number tiktoken gives) and by the byte upper bound
where it is not (``estimated``); what a provider reports is charged as reported. The ledger
keeps the source of every row, and the usage summary says how many of its tokens no
provider reported (``unreported_tokens``)."""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest, ModelManager, ModelRequirements
from squirrel_models.ledger import render

from ..support.faulty_server import ANSWER, PROMPT_TOKENS, FaultyServer
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("How many tokens is this?", max_tokens=64)


def _config(server: FaultyServer) -> dict[str, Any]:
    price = {"input": "1", "output": "2"}
    return {"providers": [{"name": "up", "type": "openai",
                           "discover": False, "options": {"base_url": server.base_url, "api_key_env": CANARY_ENV},
                           "models": [{"name": "gpt-4o-mini", "price": price, "context_window": 8192},
                                      {"name": "house-llama", "price": price, "context_window": 8192}]}],
            "budget": {"limits": [{"scope": "global", "limit": "100"}]}}


async def _stream(manager: ModelManager, model: str) -> Any:
    async with manager.stream(REQUEST, ModelRequirements(models=[model])) as s:
        async for _ in s:
            pass
    assert s.response is not None
    return s.response


async def test_every_count_says_where_it_comes_from(faulty: FaultyServer, canary_env: str) -> None:
    import tiktoken

    faulty.script("gpt-4o-mini", "no-usage", "ok")
    faulty.script("house-llama", "no-usage")
    async with ModelManager(_config(faulty)) as manager:
        counted = await _stream(manager, "up/gpt-4o-mini")
        reported = await manager.complete(REQUEST, ModelRequirements(models=["up/gpt-4o-mini"]))
        estimated = await _stream(manager, "up/house-llama")
        rows = await manager.budget_backend.rows()
        summary = {g["group"]: g for g in await manager.budget_backend.summarize("model")}
    # No usage in the stream: counted with the model's own encoding, and marked so.
    assert counted.usage.source == "counted"
    assert counted.usage.output_tokens == len(tiktoken.get_encoding("o200k_base").encode(ANSWER))
    # Reported: charged as the provider said (its prompt count, not ours).
    assert reported.usage.source == "reported" and reported.usage.input_tokens == PROMPT_TOKENS
    # No tokenizer known for the model: an upper bound, never presented as exact.
    assert estimated.usage.source == "estimated"
    assert estimated.usage.output_tokens >= len(ANSWER.split())
    by_request = {r.request_id: r.usage_source for r in rows if r.outcome == "ok"}
    assert sorted(by_request.values()) == ["counted", "estimated", "reported"]
    assert summary["up/gpt-4o-mini"]["unreported_tokens"] == counted.usage.total_tokens
    assert summary["up/house-llama"]["unreported_tokens"] == estimated.usage.total_tokens
    assert summary["up/gpt-4o-mini"]["input_tokens"] + summary["up/gpt-4o-mini"]["output_tokens"] == (
        counted.usage.total_tokens + reported.usage.total_tokens)
    assert "unreported_tokens" in render(list(summary.values()), "table")
