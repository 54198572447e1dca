"""An upstream answer is read within the core's bound (``squirrel_models.answersize``): a body
without end, a length the server never keeps, a compressed body that inflates past the bound,
an error body without end and a server-sent event whose line never ends are each a
``MalformedResponse`` once the bound is passed, and the connection is dropped. Before, each
was read into memory until the deadline (400 MB of answer: 477 MB of process). A real server
on 127.0.0.1; asyncio runs the aiohttp engine, trio the httpx engine."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import anyio
import anyio.abc
import pytest
from squirrel_models import AIRequest
from squirrel_models.answersize import MAX_ANSWER_BYTES
from squirrel_models.errors import MalformedResponse
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from .mock import card

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
CHUNK = b"a" * 65536


@cache
def bomb() -> bytes:
    """A gzip body that inflates to a little more than the bound (a few hundred kB sent)."""
    return gzip.compress(b'{"x": "' + b"a" * (MAX_ANSWER_BYTES + 1024), compresslevel=9)


def head(status: int, *lines: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status} X", *lines]) + "\r\n\r\n").encode()


#: kind -> (the answer's head and first bytes, whether endless bytes follow)
ANSWERS = {
    "endless": (head(200, "Content-Type: application/json", "Connection: close") + b'{"x": "', True),
    "length": (head(200, "Content-Type: application/json", f"Content-Length: {10**12}") + b'{"x": "', True),
    "error": (head(500, "Content-Type: application/json", "Connection: close") + b'{"error": "', True),
    "event": (head(200, "Content-Type: text/event-stream", "Connection: close") + b'data: {"x": "', True),
}


@asynccontextmanager
async def flooding(kind: str) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 that answers every request as ``kind`` says; yields its port and
    a list that gets the bytes sent on each connection once it ends."""
    sent: list[int] = []

    async def serve(conn: anyio.abc.SocketStream) -> None:
        total = 0
        async with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await conn.receive()
            try:
                if kind == "gzip":
                    body = bomb()
                    await conn.send(head(200, "Content-Type: application/json", "Content-Encoding: gzip",
                                         f"Content-Length: {len(body)}") + body)
                    total = len(body)
                    with anyio.move_on_after(30):
                        while True:  # until the client drops the connection
                            await conn.receive()
                    return
                first, _ = ANSWERS[kind]
                await conn.send(first)
                while total < 4 * MAX_ANSWER_BYTES:  # ends a test that fails, not one that passes
                    await conn.send(CHUNK)
                    total += len(CHUNK)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass
            finally:
                sent.append(total)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), sent
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["endless", "length", "gzip", "error", "event"])
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

    async def serve(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await conn.receive()
            await conn.send(head(200, "Content-Type: application/json", "Transfer-Encoding: chunked"))
            for i in range(0, len(body), 65536):
                part = body[i:i + 65536]
                await conn.send(b"%x\r\n" % len(part) + part + b"\r\n")
            await conn.send(b"0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        provider = OpenAIProvider("oa", OpenAIOptions(base_url=f"http://127.0.0.1:{port}/v1", discover=False))
        try:
            with anyio.fail_after(50):
                response = await provider.complete(card(), REQUEST)
        finally:
            await provider.aclose()
        tg.cancel_scope.cancel()
    assert len(response.text) == len(text)
