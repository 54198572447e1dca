"""The reasoning a server sends apart from the answer (huggingface_hub's ``reasoning``, or
``reasoning_content``) is output it generated and bills: with no usage in the answer, the
estimate covers it. Before, only the visible answer was estimated: a thousand tokens of
thought cost what ``Eleven.`` costs. Through a real server on 127.0.0.1 (the faulty server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelCard, ModelOverride
from squirrel_models.tokens import upper_bound
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

THOUGHT = "First I consider what a token is, then I count them one by one. " * 20
REQUEST = AIRequest.from_prompt("Think, then answer: how many?", max_tokens=4000)
CARD = ModelCard.for_provider("faulty", "ok", provider_type="huggingface")


@pytest.fixture
async def hf(faulty: FaultyServer, canary_env: str) -> AsyncIterator[HuggingFaceProvider]:
    p = HuggingFaceProvider("faulty", HuggingFaceOptions(base_url=faulty.base_url, token_env=CANARY_ENV),
                            models=[ModelOverride("ok")])
    yield p
    await p.aclose()


def _chunk(**delta: Any) -> bytes:
    event = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "ok",
             "choices": [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": None}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
async def test_an_answers_reasoning_is_estimated_with_it(hf: HuggingFaceProvider, faulty: FaultyServer,
                                                         field: str) -> None:
    faulty.serve("ok", json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "ok",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Eleven.", field: THOUGHT}}]}).encode())
    resp = await hf.complete(CARD, REQUEST)
    assert resp.text == "Eleven." and resp.usage.source == "estimated"
    assert resp.usage.output_tokens == upper_bound(text=THOUGHT + "Eleven.").tokens


async def test_a_streams_reasoning_is_estimated_with_it(hf: HuggingFaceProvider, faulty: FaultyServer) -> None:
    words = [w + " " for w in THOUGHT.split(" ")]
    last = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "ok",
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}]}
    body = b"".join(_chunk(reasoning=w) for w in words) + _chunk(content="Eleven.")
    body += b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n"
    faulty.serve("ok", body, content_type="text/event-stream")
    chunks = [c async for c in hf.stream(CARD, REQUEST)]
    assert "".join(c.text for c in chunks) == "Eleven."
    usage = chunks[-1].usage
    assert usage is not None and usage.output_tokens == upper_bound(text="".join(words) + "Eleven.").tokens
