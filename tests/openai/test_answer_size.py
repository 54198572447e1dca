"""An upstream answer is read within the core's bound (``squirrel_models.answersize``): a body
without end, a length the server never keeps, a compressed body that inflates past the bound,
an error body without end and a server-sent event whose line never ends are each a
``MalformedResponse`` once the bound is passed, and the connection is dropped. Before, each
was read into memory until the deadline (400 MB of answer: 477 MB of process). A real server
on 127.0.0.1; asyncio runs the aiohttp engine, trio the httpx engine."""

from __future__ import annotations

import json

import anyio
import pytest
from squirrel_models import AIRequest
from squirrel_models.answersize import MAX_ANSWER_BYTES
from squirrel_models.errors import MalformedResponse
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.flooding import KINDS, answering, flooding
from .mock import card

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_an_answer_past_the_bound_is_malformed_and_dropped(kind: str, stream: bool) -> None:
    if kind == "event" and not stream:
        pytest.skip("an event stream answers a streamed request")
    async with flooding(kind) as (port, sent):
        provider = OpenAIProvider("oa", OpenAIOptions(base_url=f"http://127.0.0.1:{port}/v1", discover=False,
                                                      timeout=60.0))
        try:
            with anyio.fail_after(50), pytest.raises(MalformedResponse, match="larger than 64 MiB"):
                if stream:
                    async for _ in provider.stream(card(), REQUEST):
                        pass
                else:
                    await provider.complete(card(), REQUEST)
        finally:
            await provider.aclose()
        with anyio.fail_after(30):
            while not sent:  # the server saw the connection dropped
                await anyio.sleep(0.01)
    assert sent[0] < 2 * MAX_ANSWER_BYTES


async def test_an_answer_within_the_bound_is_read_whole() -> None:
    """Just below the bound, in many pieces: still an answer (the bound is on bytes decoded)."""
    text = "a" * (MAX_ANSWER_BYTES - 1024)
    body = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()

    async with answering(body, "application/json") as port:
        provider = OpenAIProvider("oa", OpenAIOptions(base_url=f"http://127.0.0.1:{port}/v1", discover=False))
        try:
            with anyio.fail_after(50):
                response = await provider.complete(card(), REQUEST)
        finally:
            await provider.aclose()
    assert len(response.text) == len(text)
