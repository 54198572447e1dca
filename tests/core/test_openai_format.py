"""OpenAI's wire format in and out: requests from bodies (unknown fields refused by name),
responses and streamed chunks in the ChatCompletion shapes, and round trips."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    AIResponse,
    InvalidRequest,
    Message,
    OpenAIChatRequest,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
    openai_chunk,
    openai_usage_chunk,
)
from squirrel_models.errors import MalformedResponse
from squirrel_models.openai_format import response_from_openai
from squirrel_models.types import Choice, ImagePart, ResponseFormat, TextPart, assemble_tool_calls

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                          "parameters": {"type": "object", "properties": {
                                              "city": {"type": "string"}}}}}

# Text without lone surrogates (not valid Unicode: no upstream takes them).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
calls = st.builds(ToolCall, names, names, text)
images = st.builds(ImagePart, st.sampled_from(["https://example.com/cat.png", "http://h/x.jpg",
                                               "data:image/png;base64,iVBORw0KGgo="]),
                   st.sampled_from([None, "auto", "low", "high"]))
formats = st.sampled_from([None, ResponseFormat.text(), ResponseFormat.json(),
                           ResponseFormat.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}},
                                                      "thing", True)])


@st.composite
def messages(draw: st.DrawFn) -> Message:
    role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
    if role == "tool":
        return Message.tool(draw(text), draw(names))
    if role == "assistant":
        return Message.assistant(draw(text), draw(st.lists(calls, max_size=2)))
    if role == "user" and draw(st.booleans()):
        parts = draw(st.lists(st.builds(TextPart, text) | images, min_size=1, max_size=3))
        return Message("user", tuple(parts), name=draw(st.none() | names))
    return Message(role, draw(text), name=draw(st.none() | names))


requests = st.builds(
    AIRequest,
    messages=st.lists(messages(), min_size=1, max_size=4).map(tuple),
    max_tokens=st.none() | st.integers(1, 10_000_000),
    temperature=st.none() | st.floats(0, 2, allow_nan=False),
    stop=st.lists(text, max_size=3).map(tuple),
    tools=st.lists(st.just(TOOL), max_size=1).map(tuple),
    tool_choice=st.none() | st.sampled_from(["auto", "none", "required",
                                             {"type": "function", "function": {"name": "f"}}]),
    metadata=st.dictionaries(names, text, max_size=2),
    response_format=formats,
    top_p=st.none() | st.floats(0, 1, allow_nan=False),
    seed=st.none() | st.integers(-2**63, 2**63 - 1),
    n=st.integers(1, 4),
    user=st.none() | names,
)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_request_round_trip(request: AIRequest) -> None:
    body = request.to_openai("m")
    # Through JSON too: what a client sends is text.
    back = AIRequest.from_openai(json.loads(json.dumps(body)))
    assert back == request
    assert back.metadata == request.metadata
    parsed = OpenAIChatRequest.from_openai(body)
    assert parsed.model == "m" and parsed.stream is False


# Usages of the OpenAI convention (cached within input, reasoning within output), as every
# reported usage is read (Usage.from_report): what a server made of one reads back the same.
usages = st.builds(lambda i, o, c, r: Usage(i + c, o + r, c, r), st.integers(0, 10**6),
                   st.integers(0, 10**6), st.integers(0, 1000), st.integers(0, 1000))


@settings(max_examples=200, deadline=None)
@given(text, st.lists(calls, max_size=3).map(tuple), usages,
       st.sampled_from(["stop", "length", "tool_calls", None]))
def test_response_round_trip(answer: str, tool_calls: tuple[ToolCall, ...], usage: Usage,
                             finish: str | None) -> None:
    resp = AIResponse(answer, "local/m", usage, Decimal(0), None, (), finish, "abc", tool_calls)
    body = json.loads(json.dumps(resp.to_openai(created=5)))
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-abc" and body["created"] == 5 and body["model"] == "local/m"
    assert body["usage"]["total_tokens"] == usage.total_tokens
    back = response_from_openai(body)
    assert back.text == answer and back.tool_calls == tool_calls and back.usage == usage
    assert back.finish_reason == (finish or "stop")
    if tool_calls and not answer:
        assert body["choices"][0]["message"]["content"] is None


def test_several_choices_round_trip() -> None:
    choices = (Choice(0, "a", "stop"), Choice(1, "", "tool_calls", (ToolCall("c", "f", "{}"),)))
    resp = AIResponse("a", "m", Usage(1, 2), Decimal(0), None, (), "stop", "r", (), choices=choices)
    body = resp.to_openai()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert response_from_openai(body).choices == choices


@settings(max_examples=100, deadline=None)
@given(st.lists(text, max_size=5), st.lists(calls, max_size=3), st.integers(1, 4))
def test_chunks_reassemble(pieces: list[str], tool_calls: list[ToolCall], split: int) -> None:
    """Streamed chunks in the chunk shape, read back the way an SDK reads them, give the
    same text and the same calls."""
    chunks = [StreamChunk(p) for p in pieces]
    for i, c in enumerate(tool_calls):
        chunks.append(StreamChunk(tool_calls=(ToolCallDelta(i, c.id, c.name),)))
        args = c.arguments
        step = max(1, len(args) // split)
        for k in range(0, len(args), step):
            chunks.append(StreamChunk(tool_calls=(ToolCallDelta(i, arguments_fragment=args[k:k + step]),)))
    chunks.append(StreamChunk(finish_reason="stop"))
    out = [json.loads(json.dumps(openai_chunk(c, id="x", model="m", created=1, role=i == 0)))
           for i, c in enumerate(chunks)]
    assert all(o["object"] == "chat.completion.chunk" for o in out)
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    got_text = "".join(o["choices"][0]["delta"].get("content") or "" for o in out)
    deltas = [ToolCallDelta(t["index"], t.get("id"), t["function"].get("name"),
                            t["function"].get("arguments", ""))
              for o in out for t in o["choices"][0]["delta"].get("tool_calls", ())]
    assert got_text == "".join(pieces)
    assert assemble_tool_calls(deltas) == tuple(tool_calls)
    assert out[-1]["choices"][0]["finish_reason"] == "stop"


def test_usage_chunk() -> None:
    out = openai_usage_chunk(Usage(3, 4, 1), id="x", model="m", created=1)
    assert out["choices"] == []
    assert out["usage"]["prompt_tokens"] == 3 and out["usage"]["total_tokens"] == 7
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}


def test_openai_sdk_style_request() -> None:
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "max_completion_tokens": 20, "stream": True, "stream_options": {"include_usage": True},
        "tools": [TOOL], "tool_choice": "auto", "n": 1, "logprobs": False,
        "presence_penalty": 0, "parallel_tool_calls": True, "temperature": None}
    parsed = OpenAIChatRequest.from_openai(body, budget_key="team-a")
    r = parsed.request
    assert parsed.model == "gpt-4o-mini" and parsed.stream and parsed.include_usage
    assert r.messages[0] == Message.system("Be brief.")
    assert r.messages[1].text == "Hi there" and not r.images
    assert r.messages[2].tool_calls == (ToolCall("c1", "f", "{}"),)
    assert r.messages[3] == Message.tool("42", "c1")
    assert r.max_tokens == 20 and r.budget_key == "team-a" and r.tools == (TOOL,)
    vision = AIRequest.from_openai({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]}],
        "response_format": {"type": "json_object"}, "seed": 7, "top_p": 0.5, "user": "u1"})
    assert vision.messages[0].images == (ImagePart("https://example.com/cat.png", "low"),)
    assert vision.needs == (frozenset({"vision"}), frozenset({"json_mode"}))
    assert (vision.seed, vision.top_p, vision.user) == (7, 0.5, "u1")


BAD: list[tuple[Any, str]] = [
    ([], "body"),
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "frobnicate": 1}, "frobnicate"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "n": True}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
      "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": True,
      "stream_options": {"x": 1}}, "stream_options.x"),
    ({"messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 3}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": {"a": 1}}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [TOOL, {"type": "function", "function": {}}]},
     "tools[1].function.name"),
    ({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {"a": 1}}, "metadata.a"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages[0].colour"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y",
                                                                                    "size": 3}}]}]},
     "messages[0].content[0].image_url.size"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
     "response_format.type"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": 1.5}, "seed"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "user": 5}, "user"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "a"}]}]},
     "messages[0].tool_calls[0].function"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_bodies_are_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        AIRequest.from_openai(body)
    assert info.value.field == field


def test_passthrough_is_explicit() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"50256": -100},
            "frobnicate": True}
    r = AIRequest.from_openai(body, passthrough=["logit_bias", "frobnicate"])
    assert r.extra == {"logit_bias": {"50256": -100}, "frobnicate": True}
    assert r.to_openai()["logit_bias"] == {"50256": -100}
    for name in ("max_tokens", "n", "messages", "stream", "tools"):
        with pytest.raises(InvalidRequest) as info:
            AIRequest.from_openai(body, passthrough=[name])
        assert info.value.field == name


_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", "", "User"])
_values = st.one_of(st.text(max_size=20), st.none(), st.integers(), st.lists(st.text(max_size=5), max_size=2))


@settings(max_examples=300)
@given(st.one_of(
    st.fixed_dictionaries({"role": st.one_of(_roles, _values), "content": _values}),
    st.dictionaries(st.sampled_from(["role", "content", "name", "tool_call_id", "refusal", "x"]),
                    st.one_of(_roles, _values), max_size=3)))
def test_the_plain_message_step_decides_as_every_check_does(data: dict[str, Any]) -> None:
    """The one-step path of the usual message (``{"role", "content": text}``) gives what the
    full checks give, and leaves every other message to them."""
    from squirrel_models import InvalidRequest
    from squirrel_models.openai_format import _checked_message, _plain_message, message_from_openai

    plain = _plain_message(data)
    try:
        checked = _checked_message(data, "m")
    except InvalidRequest:
        assert plain is None
        with pytest.raises(InvalidRequest):
            message_from_openai(data)
        return
    assert plain is None or plain == checked
    assert message_from_openai(data) == checked


@pytest.mark.parametrize("fn", [{"name": "", "arguments": "{}"}, {"arguments": "{}"}, {"name": 3}, "f"])
def test_a_tool_call_without_a_name_is_malformed(fn: Any) -> None:
    """An answer (or, through the gateway, a request's history) whose tool call has no name:
    a typed error, never a call named ``""``."""
    body = {"choices": [{"message": {"role": "assistant", "content": None,
                                     "tool_calls": [{"id": "t1", "type": "function", "function": fn}]}}]}
    with pytest.raises(MalformedResponse, match="function"):
        response_from_openai(body)
