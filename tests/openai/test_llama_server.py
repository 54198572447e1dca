"""Against a real OpenAI-compatible server: llama.cpp serving SmolLM2-135M-Instruct.

Temperature 0 is not reproducible on this server: never assert exact text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    ContextWindowExceeded,
    ModelManager,
    ModelOverride,
)
from squirrel_models.testing.conformance import ProviderConformance
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.llama_server import LlamaServer
from .conftest import LLAMA_KEY

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("Name a colour.", max_tokens=8, temperature=0.0)


def make(server: LlamaServer, **options: Any) -> OpenAIProvider:
    options.setdefault("api_key_env", "SQUIRREL_TEST_LLAMA_KEY")
    return OpenAIProvider("local", OpenAIOptions(base_url=server.base_url, **options),
                          models=[ModelOverride("smollm2", context_window=2048)])


@pytest.fixture
async def local(llama_server: LlamaServer, canary_env: str) -> AsyncIterator[OpenAIProvider]:
    p = make(llama_server)
    yield p
    await p.aclose()


class TestConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, llama_server: LlamaServer, canary_env: str) -> AsyncIterator[OpenAIProvider]:
        p = make(llama_server)
        yield p
        await p.aclose()

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [LLAMA_KEY]


async def test_discovery(local: OpenAIProvider) -> None:
    (card,) = await local.list_models()
    assert (card.id, card.model, card.provider_type) == ("local/smollm2", "smollm2", "openai")
    assert card.context_window == 2048  # from the configuration
    assert card.price is None  # not an OpenAI model: unknown, never $0


async def test_complete_reports_usage(local: OpenAIProvider) -> None:
    (card,) = await local.list_models()
    resp = await local.complete(card, PROMPT)
    assert resp.text.strip()
    assert resp.usage.source == "reported"
    assert resp.usage.input_tokens > 5 and 0 < resp.usage.output_tokens <= 8
    assert resp.finish_reason in ("stop", "length")


async def test_stream_counts_what_the_server_does_not_report(local: OpenAIProvider) -> None:
    (card,) = await local.list_models()
    chunks = [c async for c in local.stream(card, PROMPT)]
    text = "".join(c.text for c in chunks)
    assert text.strip() and len(chunks) >= 2
    usage = chunks[-1].usage
    assert usage is not None and usage.source == "estimated"  # SmolLM2's tokenizer is not tiktoken's
    assert usage.output_tokens == min(len(text.encode()), 8)  # an upper bound on what arrived
    assert usage.input_tokens >= (await local.complete(card, PROMPT)).usage.input_tokens


async def test_context_window_exceeded(local: OpenAIProvider) -> None:
    (card,) = await local.list_models()
    with pytest.raises(ContextWindowExceeded) as info:
        await local.complete(card, AIRequest.from_prompt("word " * 3000, max_tokens=8))
    assert info.value.window == 2048 and info.value.needed is not None and info.value.needed > 2048


async def test_wrong_key(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUIRREL_TEST_WRONG_KEY", "sk-wrong-key-0000")
    p = make(llama_server, api_key_env="SQUIRREL_TEST_WRONG_KEY")
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.list_models()
        assert info.value.status_code == 401 and "sk-wrong" not in str(info.value)
    finally:
        await p.aclose()


async def test_model_manager_end_to_end(llama_server: LlamaServer, canary_env: str) -> None:
    cfg = {"providers": [{"name": "local", "type": "openai",
                          "options": {"base_url": llama_server.base_url,
                                      "api_key_env": "SQUIRREL_TEST_LLAMA_KEY"},
                          "models": [{"name": "smollm2", "context_window": 2048,
                                      "price": {"input": "0.1", "output": "0.2"}}]}],
           "budget": {"limits": [{"scope": "global", "limit": "1"}]}}
    async with ModelManager(cfg) as mm:
        assert list(mm.models) == ["local/smollm2"]
        resp = await mm.complete(PROMPT)
        assert resp.model == "local/smollm2" and resp.text.strip()
        assert resp.usage.source == "reported" and resp.cost is not None and resp.cost > 0
        async with mm.stream(PROMPT) as s:
            parts = [c.text async for c in s]
        assert s.response is not None and s.response.text == "".join(parts)
        assert s.response.usage.source == "estimated" and s.response.cost is not None
