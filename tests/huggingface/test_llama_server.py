"""Through huggingface_hub's client against a real OpenAI-compatible server: llama.cpp serving
SmolLM2-135M-Instruct (what a self-hosted TGI or Inference Endpoint looks like to the client).

Temperature 0 is not reproducible on this server: never assert exact text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from squirrel_models import AIRequest, AuthenticationError, ContextWindowExceeded, ModelManager, ModelOverride
from squirrel_models.testing.conformance import ProviderConformance
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.llama_server import LlamaServer
from .conftest import LLAMA_KEY, LLAMA_KEY_ENV

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("Name a colour.", max_tokens=8, temperature=0.0)


def make(server: LlamaServer, **options: Any) -> HuggingFaceProvider:
    options.setdefault("token_env", LLAMA_KEY_ENV)
    return HuggingFaceProvider("tgi", HuggingFaceOptions(base_url=server.base_url, **options),
                               models=[ModelOverride("smollm2", context_window=2048)])


@pytest.fixture
async def remote(llama_server: LlamaServer, canary_env: str) -> AsyncIterator[HuggingFaceProvider]:
    p = make(llama_server)
    yield p
    await p.aclose()


class TestConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, llama_server: LlamaServer, canary_env: str) -> AsyncIterator[HuggingFaceProvider]:
        p = make(llama_server)
        yield p
        await p.aclose()

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [LLAMA_KEY]


async def test_cards(remote: HuggingFaceProvider) -> None:
    (card,) = await remote.list_models()
    assert (card.id, card.model, card.provider_type) == ("tgi/smollm2", "smollm2", "huggingface")
    assert card.context_window == 2048 and card.price is None  # unknown, never $0


async def test_complete_reports_usage(remote: HuggingFaceProvider) -> None:
    (card,) = await remote.list_models()
    resp = await remote.complete(card, PROMPT)
    assert resp.text.strip() and resp.usage.source == "reported"
    assert resp.usage.input_tokens > 5 and 0 < resp.usage.output_tokens <= 8
    assert resp.finish_reason in ("stop", "length")


async def test_stream_estimates_what_the_server_does_not_report(remote: HuggingFaceProvider) -> None:
    (card,) = await remote.list_models()
    chunks = [c async for c in remote.stream(card, PROMPT)]
    text = "".join(c.text for c in chunks)
    assert text.strip() and len(chunks) >= 2
    usage = chunks[-1].usage
    assert usage is not None and usage.source == "estimated"  # llama.cpp streams carry no usage
    assert usage.output_tokens == min(len(text.encode()), 8)
    assert usage.input_tokens >= (await remote.complete(card, PROMPT)).usage.input_tokens  # an upper bound


async def test_context_window_exceeded(remote: HuggingFaceProvider) -> None:
    (card,) = await remote.list_models()
    with pytest.raises(ContextWindowExceeded):
        await remote.complete(card, AIRequest.from_prompt("word " * 3000, max_tokens=8))


async def test_wrong_token(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUIRREL_TEST_HF_WRONG", "hf_wrong_token_0000")
    p = make(llama_server, token_env="SQUIRREL_TEST_HF_WRONG")
    try:
        (card,) = await p.list_models()
        with pytest.raises(AuthenticationError) as info:
            await p.complete(card, PROMPT)
        assert info.value.status_code == 401 and "hf_wrong" not in str(info.value)
    finally:
        await p.aclose()


async def test_model_manager_end_to_end(llama_server: LlamaServer, canary_env: str) -> None:
    cfg = {"providers": [{"name": "tgi", "type": "huggingface",
                          "options": {"base_url": llama_server.base_url, "token_env": LLAMA_KEY_ENV},
                          "models": [{"name": "smollm2", "context_window": 2048,
                                      "price": {"input": "0.1", "output": "0.2"}}]}],
           "budget": {"limits": [{"scope": "global", "limit": "1"}]}}
    async with ModelManager(cfg) as mm:
        assert list(mm.models) == ["tgi/smollm2"]
        resp = await mm.complete(PROMPT)
        assert resp.model == "tgi/smollm2" and resp.text.strip()
        assert resp.usage.source == "reported" and resp.cost is not None and resp.cost > 0
        async with mm.stream(PROMPT) as s:
            parts = [c.text async for c in s]
        assert s.response is not None and s.response.text == "".join(parts)
        assert s.response.usage.source == "estimated" and s.response.cost is not None
