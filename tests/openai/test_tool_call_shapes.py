"""A tool call of any shape in an upstream answer, whole or streamed, ends as a tool call a
caller can run (a name, arguments as text) or as a ``SquirrelError`` (a ``MalformedResponse``
for the shapes the protocol does not allow): never a call with an empty name, which the
plugin passed on before for a ``function`` that was not an object or a name that was missing
(:mod:`squirrel_models.toolcalls`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from squirrel_models import AIRequest, MalformedResponse, SquirrelError
from squirrel_models.types import assemble_tool_calls

from ..support.upstream_fuzz import TOOL_CALL_ANSWERS, check_tool_calls
from .mock import card, provider, sse, stream_response

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Weather?", max_tokens=16)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


async def answer(stream: bool, body: bytes) -> tuple[Any, ...]:
    """The tool calls the plugin reads from ``body``."""
    def handler(request: httpx.Request) -> httpx.Response:
        if stream:
            return stream_response(body)
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    p = provider(handler)
    try:
        if stream:
            return assemble_tool_calls([d async for c in p.stream(card(), REQUEST) for d in c.tool_calls])
        return (await p.complete(card(), REQUEST)).tool_calls
    finally:
        await p.aclose()


@FUZZ
@given(TOOL_CALL_ANSWERS)
async def test_any_tool_call_shape_is_a_runnable_call_or_a_squirrel_error(shaped: tuple[bool, bytes]) -> None:
    try:
        calls = await answer(*shaped)
    except SquirrelError:
        return
    check_tool_calls(calls)


BAD_CALLS = [
    {"id": "t1", "type": "function", "function": "get_weather"},
    {"id": "t1", "type": "function", "function": {"arguments": "{}"}},
    {"id": "t1", "type": "function", "function": {"name": 3, "arguments": "{}"}},
    {"id": "t1", "type": "function", "function": {"name": "", "arguments": "{}"}},
    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": 3}},
    {"id": "t1", "type": "function"},
]


@pytest.mark.parametrize("call", BAD_CALLS)
async def test_a_malformed_tool_call_is_a_malformed_answer(call: dict[str, Any]) -> None:
    body = {"choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    import json

    with pytest.raises(MalformedResponse, match="tool call"):
        await answer(False, json.dumps(body).encode())


@pytest.mark.parametrize("call", [*BAD_CALLS[:4], {"index": 0, "id": "t1", "function": {"arguments": "{"}}])
async def test_a_malformed_first_tool_call_piece_is_a_malformed_answer(call: dict[str, Any]) -> None:
    """The first piece of a streamed call carries its name; a stream that breaks that before
    any chunk came falls back like any malformed answer."""
    piece = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}}]}
    with pytest.raises(MalformedResponse, match="tool call"):
        await answer(True, sse(piece))


async def test_later_pieces_may_leave_the_name_out() -> None:
    first = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}]}}]}
    later = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]}
    calls = await answer(True, sse(first, later))
    assert [(c.id, c.name, c.arguments) for c in calls] == [("t1", "f", '{"a": 1}')]
