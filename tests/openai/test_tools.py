"""Tool calls over httpx.MockTransport: what is sent (tools, tool_choice, assistant calls and tool
results), what is parsed (message tool_calls, streamed index-keyed fragments) and how it is counted."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from squirrel_models import AIRequest, MalformedResponse, Message, MidStreamError, ToolCall, ToolCallDelta
from squirrel_models.types import assemble_tool_calls
from squirrel_models_openai._tokens import count_request

from .mock import BrokenStream, card, completion, json_response, provider, sse, stream_response, usage_event

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
ASK = AIRequest.from_prompt("Weather in Paris?", tools=[WEATHER], max_tokens=32,
                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
USAGE = {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}


def tool_answer(*calls: dict[str, Any], text: str | None = None, usage: dict[str, Any] | None = USAGE
                ) -> dict[str, Any]:
    body = completion("", usage, "tool_calls")
    body["choices"][0]["message"] = {"role": "assistant", "content": text, "tool_calls": list(calls)}
    return body


def call_json(id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_delta(*pieces: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"tool_calls": list(pieces)}, "finish_reason": finish}]}


async def test_request_body_carries_tools_choice_and_the_previous_turn() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return json_response(completion("It is 18C."))

    follow = AIRequest([*ASK.messages, Message.assistant(tool_calls=[CALL]), Message.tool("18C", "call_1")],
                       tools=ASK.tools, tool_choice="auto")
    p = provider(handler)
    await p.complete(card(), ASK)
    await p.complete(card(), follow)
    assert seen[0]["tools"] == [WEATHER]
    assert seen[0]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert seen[1]["tool_choice"] == "auto"
    assert seen[1]["messages"][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [call_json("call_1", "get_weather", CALL.arguments)]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1"}]
    plain = []
    await provider(lambda r: (plain.append(json.loads(r.content)), json_response(completion()))[1]).complete(
        card(), AIRequest.from_prompt("hi"))
    assert "tools" not in plain[0] and "tool_choice" not in plain[0]


async def test_complete_parses_tool_calls() -> None:
    body = tool_answer(call_json("call_1", "get_weather", CALL.arguments),
                       call_json("call_2", "get_time", {"tz": "UTC"}),  # some servers send an object
                       {"id": "x", "type": "custom", "custom": {"name": "grammar", "input": "?"}})
    r = await provider(lambda req: json_response(body)).complete(card(), ASK)
    assert r.text == "" and r.finish_reason == "tool_calls"
    assert r.tool_calls == (CALL, ToolCall("call_2", "get_time", '{"tz": "UTC"}'))
    assert r.usage.output_tokens == 9


async def test_plain_answers_have_no_tool_calls() -> None:
    r = await provider(lambda req: json_response(completion("Hello!", USAGE))).complete(card(), ASK)
    assert r.tool_calls == () and r.text == "Hello!"


@pytest.mark.parametrize("calls", ["nope", ["nope"], [call_json("c", "f", 3)], [call_json(1, "f", "{}")]])
async def test_malformed_tool_calls(calls: Any) -> None:
    body = tool_answer()
    body["choices"][0]["message"]["tool_calls"] = calls
    with pytest.raises(MalformedResponse):
        await provider(lambda req: json_response(body)).complete(card(), ASK)


async def test_unreported_usage_counts_tool_calls_as_approximate() -> None:
    r = await provider(lambda req: json_response(tool_answer(call_json("call_1", "get_weather", CALL.arguments),
                                                             usage=None))).complete(card(), ASK)
    assert r.tool_calls == (CALL,)
    assert r.usage.source == "estimated" and r.usage.output_tokens >= 5


async def test_stream_yields_index_keyed_pieces() -> None:
    events = [
        tool_delta({"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                                  "arguments": ""}}),
        tool_delta({"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time",
                                                                                  "arguments": "{}"}}),
        tool_delta({"index": 0, "function": {"arguments": '{"city": '}}),
        tool_delta({"index": 0, "function": {"arguments": '"Paris"}'}}),
        tool_delta(finish="tool_calls"),
        usage_event(USAGE),
    ]
    chunks = [c async for c in provider(lambda r: stream_response(sse(*events))).stream(card(), ASK)]
    pieces = [d for c in chunks for d in c.tool_calls]
    assert pieces[:2] == [ToolCallDelta(0, "call_1", "get_weather", ""), ToolCallDelta(1, "call_2", "get_time", "{}")]
    assert assemble_tool_calls(pieces) == (CALL, ToolCall("call_2", "get_time", "{}"))
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == 9


async def test_stream_from_a_server_that_ignores_stream() -> None:
    body = tool_answer(call_json("call_1", "get_weather", CALL.arguments))
    chunks = [c async for c in provider(lambda r: json_response(body)).stream(card(), ASK)]
    assert chunks[0].tool_calls == (ToolCallDelta.from_call(0, CALL),)
    assert chunks[-1].finish_reason == "tool_calls"


async def test_stream_broken_after_tool_pieces_is_mid_stream() -> None:
    raw = sse(tool_delta({"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": "{"}}),
              done=False)
    p = provider(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                          stream=BrokenStream([raw], httpx.ReadError("reset"))))
    chunks = []
    with pytest.raises(MidStreamError) as err:
        async for c in p.stream(card(), ASK):
            chunks.append(c)
    assert chunks and chunks[0].tool_calls
    assert err.value.usage is not None and err.value.usage.output_tokens > 0


async def test_tool_calls_in_history_are_counted_approximately() -> None:
    plain = AIRequest([Message.user("Weather in Paris?"), Message("assistant", "Let me see.")])
    called = AIRequest([Message.user("Weather in Paris?"), Message.assistant("Let me see.", [CALL])])
    a, b = count_request("gpt-4o", plain), count_request("gpt-4o", called)
    assert a is not None and b is not None
    assert a.exact and not b.exact
    assert b.tokens > a.tokens + 5  # the call's id, name and arguments count


async def test_passed_through_fields_are_sent_as_they_are_and_never_override() -> None:
    """``AIRequest.from_openai(body, passthrough=...)``: the named fields reach the upstream
    body unchanged; what the provider sets itself (model, messages, the output cap) wins."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return json_response(completion("ok"))

    req = AIRequest.from_openai({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                                 "logit_bias": {"50256": -100}, "model": "x"},
                                passthrough=["logit_bias"])
    await provider(handler).complete(card(), req)
    assert seen[0]["logit_bias"] == {"50256": -100}
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert seen[0]["model"] != "x"
