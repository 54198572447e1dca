"""``simple.json_lines``: a provider for an API streaming newline-delimited JSON (not
server-sent events) reads it with the core's bounded line splitter, and a stream cut before
its last line is an error, not a whole answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from squirrel_models import (
    AIRequest,
    MalformedResponse,
    MidStreamError,
    ModelCard,
    ProviderConnectionError,
    ProviderSpec,
    ServerError,
    SimpleProvider,
    StreamChunk,
    Usage,
)
from squirrel_models.simple import json_lines, raise_for_status
from squirrel_models.testing.conformance import HTTPX_UNCLOSED

# httpx leaves its body generators to the garbage collector when a response closes early (#3686)
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(f"ignore:{HTTPX_UNCLOSED}:ResourceWarning")]
REQUEST = AIRequest.from_prompt("hi")


def ndjson(*objs: Any) -> bytes:
    # ensure_ascii=False: a server may send U+2028 raw inside JSON text, as JSON allows
    return b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)


class Lines(SimpleProvider):
    """An Ollama-style NDJSON chat API, as a plugin author would read it."""

    default_models = ("m",)

    def __init__(self, body: bytes) -> None:
        super().__init__(ProviderSpec("nd", "ndjson", None))
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(
            200, content=body, headers={"content-type": "application/x-ndjson"})))

    async def generate(self, model: ModelCard, request: AIRequest) -> AsyncIterator[Any]:
        async with self.client.stream("POST", "http://nd.test/api/chat") as response:
            await raise_for_status(response)
            async for line in json_lines(response, end=lambda e: e.get("done")):
                yield line["text"]
                if line.get("done"):
                    yield StreamChunk(finish_reason="stop")
                    yield Usage(line["in"], line["out"])

    async def aclose(self) -> None:
        await self.client.aclose()


async def answer(body: bytes) -> tuple[str, Usage]:
    p = Lines(body)
    try:
        model = (await p.list_models())[0]
        resp = await p.complete(model, REQUEST)
        return resp.text, resp.usage
    finally:
        await p.aclose()


async def test_a_whole_stream_is_read_to_its_last_line() -> None:
    body = ndjson({"text": "one\u2028two "}, {"text": "three", "done": True, "in": 3, "out": 2})
    # httpx's aiter_lines ends a line at that U+2028 too, cutting a valid line in two
    assert (await answer(body))[0] == "one\u2028two three"
    assert (await answer(body))[1] == Usage(3, 2)


async def test_a_stream_cut_before_its_last_line_is_not_an_answer() -> None:
    with pytest.raises(ProviderConnectionError, match="cut short"):
        await answer(b"")
    p = Lines(ndjson({"text": "one "}, {"text": "two "}))
    model = (await p.list_models())[0]
    with pytest.raises(MidStreamError) as info:
        async for _ in p.stream(model, REQUEST):
            pass
    await p.aclose()
    assert info.value.partial_text == "one two "


@pytest.mark.parametrize(("body", "error"), [
    (b'{"text": "one "}\nnot json\n', MalformedResponse),
    (ndjson({"error": {"type": "server_error", "message": "overloaded"}}), ServerError),
], ids=["not json", "error line"])
async def test_a_bad_line_is_the_cores_error(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        await answer(body)


async def test_without_an_end_a_stream_just_ends_and_blank_lines_are_skipped() -> None:
    body = ndjson({"a": 1}) + b"\r\n\n" + ndjson({"a": 2})[:-1]  # the last line without its newline
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    async with httpx.AsyncClient(transport=transport) as client, client.stream("GET", "http://x/") as response:
        assert [o["a"] async for o in json_lines(response, end=None)] == [1, 2]
