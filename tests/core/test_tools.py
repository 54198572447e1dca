"""Tool calls end to end with the scripted provider: types, assembly of streamed pieces,
``AIResponse.tool_calls`` from ``complete`` and ``stream``, and a multi-turn round trip."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
from squirrel_models import (
    AIRequest,
    InvalidRequest,
    Message,
    ModelRequirements,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
)
from squirrel_models.testing import Reply, ScriptedProvider, ToolReply
from squirrel_models.types import assemble_tool_calls

from .helpers import card, provider

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
ASK = AIRequest.from_prompt("weather in Paris?", tools=[WEATHER], tool_choice="auto", max_tokens=20)


# --- types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_types_default_to_no_tool_calls(anyio_backend: str) -> None:
    assert Message.user("hi").tool_calls == ()
    assert StreamChunk("x").tool_calls == ()
    req = AIRequest.from_prompt("hi")
    assert req.tool_choice is None and req.tools == ()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_message_constructors_and_validation(anyio_backend: str) -> None:
    m = Message.assistant(tool_calls=[CALL])
    assert (m.role, m.content, m.tool_calls) == ("assistant", "", (CALL,))
    assert Message.tool("18C", "call_1") == Message("tool", "18C", tool_call_id="call_1")
    with pytest.raises(InvalidRequest) as err:
        Message("assistant", "", tool_calls=[{"id": "x"}])  # type: ignore[list-item]
    assert err.value.field == "tool_calls[0]"
    with pytest.raises(InvalidRequest) as err:
        AIRequest.from_prompt("hi", tool_choice="sometimes")
    assert err.value.field == "tool_choice"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert AIRequest.from_prompt("hi", tool_choice=named).tool_choice == named


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_assembly_joins_fragments_by_index(anyio_backend: str) -> None:
    deltas = [ToolCallDelta(1, "call_b", "b"), ToolCallDelta(0, "call_a", "a", '{"x":'),
              ToolCallDelta(1, None, None, "{}"), ToolCallDelta(0, arguments_fragment=" 1}"),
              ToolCallDelta(0, "", "a")]  # a repeated (or empty) id/name keeps the first
    assert assemble_tool_calls(deltas) == (ToolCall("call_a", "a", '{"x": 1}'), ToolCall("call_b", "b", "{}"))
    assert assemble_tool_calls([ToolCallDelta(0, arguments_fragment="{}")]) == (ToolCall("", "", "{}"),)
    assert ToolCallDelta.from_call(2, CALL) == ToolCallDelta(2, "call_1", "get_weather", '{"city": "Paris"}')


# --- through the manager -------------------------------------------------------------------


def _tools_provider() -> ScriptedProvider:
    p = provider("p", card("tooly", features={"streaming", "system_prompt", "tools"}),
                 card("plain", price=("0.01", "0.01")))
    return p


async def test_complete_returns_tool_calls(squirrel_manager) -> None:
    p = _tools_provider()
    p.script("tooly", ToolReply([CALL]))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(ASK, ModelRequirements(required_features={"tools"}))
    assert resp.model == "p/tooly"  # "plain" is cheaper, but does not advertise tools
    assert (resp.text, resp.finish_reason, resp.tool_calls) == ("", "tool_calls", (CALL,))
    # output: the words of the call's name and arguments
    assert resp.usage.output_tokens == 3
    assert resp.cost == (resp.usage.input_tokens * Decimal(1) + 3 * Decimal(2)) / 1_000_000


async def test_stream_assembles_tool_calls(squirrel_manager) -> None:
    p = _tools_provider()
    second = ToolCall("call_2", "get_time", '{"tz": "Europe/Paris"}')
    p.script("tooly", ToolReply([CALL, second], text="Let me check."))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        async with mm.stream(ASK, ModelRequirements(required_features={"tools"})) as s:
            chunks = [c async for c in s]
            assert s.tool_calls == (CALL, second)
    assert sum(len(c.tool_calls) for c in chunks) == 6  # id+name, then two argument fragments, each
    assert s.response is not None
    assert s.response.text == "Let me check."
    assert s.response.tool_calls == (CALL, second)
    assert s.response.finish_reason == "tool_calls"
    assert s.response.usage.output_tokens == 3 + 3 + 3  # the words of the text and of each call


async def test_plain_answers_have_no_tool_calls(squirrel_manager) -> None:
    p = _tools_provider()
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(AIRequest.from_prompt("hi"))
        async with mm.stream(AIRequest.from_prompt("hi")) as s:
            async for _ in s:
                pass
    assert resp.tool_calls == () and s.response is not None and s.response.tool_calls == ()


async def test_multi_turn_round_trip(squirrel_manager) -> None:
    p = _tools_provider()
    p.script("tooly", ToolReply([CALL]), Reply("It is 18C in Paris."))
    need = ModelRequirements(required_features={"tools"})
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        first = await mm.complete(ASK, need)
        follow = attrs.evolve(ASK, messages=[*ASK.messages, Message.assistant(first.text, first.tool_calls),
                                             *(Message.tool("18C", c.id) for c in first.tool_calls)])
        second = await mm.complete(follow, need)
    assert second.text == "It is 18C in Paris." and second.tool_calls == ()
    assert p.last_request is not None
    sent = p.last_request.messages
    assert sent[-2].tool_calls == (CALL,) and sent[-1].tool_call_id == "call_1"
