"""Local transformers models: a tiny random LlamaForCausalLM with a byte-level BPE tokenizer,
built offline and saved as a folder, loaded through the same code as a user's model folder.
Random weights say nothing sensible: the tests check mechanics, never text."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from squirrel_models import AIRequest, ContextWindowExceeded, Message, ModelManager
from squirrel_models.testing.conformance import ProviderConformance
from squirrel_models.tokens import upper_bound
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.stalls import loop_stalls
from .conftest import needs_local
from .tiny_model import CONTEXT

pytestmark = [pytest.mark.anyio, needs_local]

PROMPT = AIRequest.from_prompt("Say hello in one short sentence.", max_tokens=12)


def make(folder: Path, **options: object) -> HuggingFaceProvider:
    # One torch thread, as in CI: on a shared 2-core machine at load 25, torch's default (a
    # thread per core) took 10.6 s for 40 tokens of the tiny model, 1 thread 1.3 s, and "one
    # token's time" (how long a stop takes to be seen) grew with it.
    options.setdefault("threads", 1)
    return HuggingFaceProvider("loc", HuggingFaceOptions(model_path=str(folder), **options))  # type: ignore[arg-type]


@pytest.fixture
async def local(tiny_model: Path) -> AsyncIterator[HuggingFaceProvider]:
    p = make(tiny_model)
    yield p
    await p.aclose()


class TestConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, tiny_model: Path) -> AsyncIterator[HuggingFaceProvider]:
        p = make(tiny_model)
        yield p
        await p.aclose()


async def test_card_from_the_model_config(local: HuggingFaceProvider, tiny_model: Path) -> None:
    (card,) = await local.list_models()
    assert (card.id, card.model, card.provider_type) == ("loc/tiny-llama", "tiny-llama", "huggingface")
    assert card.context_window == json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert card.context_window == CONTEXT
    assert card.metadata["architecture"] == "LlamaForCausalLM" and card.metadata["model_type"] == "llama"
    assert card.price is None  # unknown unless configured
    assert "chat" in card.capabilities and "streaming" in card.features


async def test_generation_counts_exactly(local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    resp = await local.complete(card, PROMPT)
    assert isinstance(resp.text, str) and resp.usage.source == "counted"
    assert 0 < resp.usage.output_tokens <= 12 and resp.finish_reason in ("stop", "length")
    exact = local.count(card, PROMPT, None)
    assert exact is not None and exact.exact and exact.tokens == resp.usage.input_tokens
    assert exact.tokens < upper_bound(PROMPT).tokens
    # The chat template counts: more tokens than the bare message text.
    bare = local.count(card, None, PROMPT.messages[0].content)
    assert bare is not None and bare.exact and bare.tokens < exact.tokens


async def test_streaming(local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    chunks = [c async for c in local.stream(card, AIRequest.from_prompt("Name a colour.", max_tokens=24))]
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "counted"
    assert chunks[-1].usage.output_tokens <= 24 and len(chunks) >= 2
    assert all(c.usage is None for c in chunks[:-1])


async def test_closing_a_stream_stops_generation_promptly(local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    long = AIRequest.from_prompt("Go on and on.", max_tokens=CONTEXT - 30)
    before = threading.active_count()
    it = local.stream(card, long).__aiter__()
    await it.__anext__()
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        await it.aclose()  # type: ignore[attr-defined]
        assert stalls.elapsed(t0) < 1.0, stalls  # time the machine gave to others is not ours
    assert threading.active_count() <= before  # the generation thread is gone
    resp = await local.complete(card, PROMPT)  # and the model is free again
    assert resp.usage.output_tokens > 0


async def test_cancellation_stops_generation(local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    long = AIRequest.from_prompt("Go on and on.", max_tokens=CONTEXT - 30)
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with anyio.move_on_after(0.05):
            await local.complete(card, long)
        assert stalls.elapsed(t0) < 1.0, stalls
    assert not local.local.generate_lock.locked()  # type: ignore[union-attr]


async def test_stop_strings_and_context_window(local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    resp = await local.complete(card, PROMPT)
    if len(resp.text) > 2:  # random text: stop at its second character
        stopped = await local.complete(card, AIRequest(PROMPT.messages, max_tokens=12, stop=(resp.text[1],)))
        assert resp.text[1] not in stopped.text and stopped.finish_reason == "stop"
    with pytest.raises(ContextWindowExceeded) as info:
        await local.complete(card, AIRequest.from_prompt("colour " * 400, max_tokens=4))
    assert info.value.window == CONTEXT


async def test_model_manager_end_to_end(tiny_model: Path) -> None:
    cfg = {"providers": [{"name": "loc", "type": "huggingface", "options": {"model_path": str(tiny_model)},
                          "models": [{"name": "tiny-llama", "price": {"input": 0, "output": 0}}]}],
           "budget": {"limits": [{"scope": "global", "limit": "1"}]}}
    async with ModelManager(cfg) as mm:
        card = mm.models["loc/tiny-llama"]
        assert card.price is not None and card.price.input == 0  # configured: free
        estimate = mm.tokens.count_prompt(card, PROMPT)
        assert estimate.exact  # the count_tokens hook answered with the model's tokenizer
        resp = await mm.complete(PROMPT)
        assert resp.usage.source == "counted" and resp.usage.input_tokens == estimate.tokens
        assert resp.cost == 0
        async with mm.stream(AIRequest([Message.system("Be brief."), Message.user("Hi")], max_tokens=6)) as s:
            parts = [c.text async for c in s]
        assert s.response is not None and s.response.text == "".join(parts)


