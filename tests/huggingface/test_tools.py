"""Tool calls in huggingface_hub's output types (and plain mappings) map to the core's types;
the round trip through a server is in test_faulty (``test_tool_calls_round_trip``)."""

from __future__ import annotations

import pytest
from squirrel_models import AIRequest, MalformedResponse, Message, ToolCall, ToolCallDelta
from squirrel_models_huggingface.remote import message_dicts, parse_tool_call_deltas, parse_tool_calls

CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')


def test_output_types_map_to_tool_calls() -> None:
    from huggingface_hub import ChatCompletionOutputFunctionDefinition, ChatCompletionOutputToolCall

    out = [ChatCompletionOutputToolCall(function=ChatCompletionOutputFunctionDefinition(
               arguments='{"city": "Paris"}', name="get_weather"), id="call_1", type="function"),
           # TGI has sent arguments as an object: it is encoded back to JSON text
           {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]
    assert parse_tool_calls(out) == (CALL, ToolCall("call_2", "get_time", '{"tz": "UTC"}'))
    assert parse_tool_calls(None) == ()
    with pytest.raises(MalformedResponse):
        parse_tool_calls([{"id": "c", "function": {"name": "f", "arguments": 3}}])


def test_stream_deltas_map_to_pieces() -> None:
    from huggingface_hub import ChatCompletionStreamOutputDeltaToolCall, ChatCompletionStreamOutputFunction

    first = ChatCompletionStreamOutputDeltaToolCall(
        function=ChatCompletionStreamOutputFunction(arguments="", name="get_weather"), id="call_1", index=0,
        type="function")
    named: set[int] = set()
    assert parse_tool_call_deltas([first], named) == (ToolCallDelta(0, "call_1", "get_weather", ""),)
    # a later fragment without id or name, and an older TGI's single object rather than a list
    assert parse_tool_call_deltas({"index": 0, "function": {"arguments": "{}"}}, named) == (
        ToolCallDelta(0, None, None, "{}"),)
    # the first piece of a call names it
    with pytest.raises(MalformedResponse, match="name"):
        parse_tool_call_deltas({"index": 1, "function": {"arguments": "{}"}}, named)


def test_messages_carry_calls_and_results() -> None:
    req = AIRequest([Message.user("Weather?"), Message.assistant(tool_calls=[CALL]), Message.tool("18C", "call_1")])
    assert message_dicts(req)[1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CALL.arguments}}]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1"}]
