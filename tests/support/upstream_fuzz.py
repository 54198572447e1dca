"""Upstream answers of every shape for fuzzing a provider (hypothesis strategies): valid chat
completion bodies and stream chunks with one part replaced by a random value (an object where
a list belongs, numbers where text belongs, huge and non-finite numbers, wrong types in
``usage``), random JSON, bytes that are not JSON at all, SSE streams of those events (cut
anywhere with :data:`CUT_STREAMS`), and the status codes and headers an upstream may answer
with. ``tests/reliability/test_fuzz_upstream.py`` and ``tests/huggingface/test_fuzz_upstream.py``
serve them."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["BODIES", "BODY", "CHUNK", "CUT_STREAMS", "EVENT", "GARBAGE", "HEADERS", "LAST", "STATUSES",
           "STREAMS", "TOOL_CALL_ANSWERS", "USAGE", "VALUES", "Lent", "check_tool_calls", "paths"]

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
         "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 0}}
BODY = {"id": "c1", "object": "chat.completion", "model": "fuzz",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hello!",
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": USAGE}
CHUNK = {"object": "chat.completion.chunk", "choices": [{"index": 0, "finish_reason": None, "delta": {
    "content": [{"type": "text", "text": "Hel"}],
    "tool_calls": [{"index": 0, "id": "t1", "function": {"name": "f", "arguments": "{"}}]}}]}
LAST = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": USAGE}
KEYS = ["choices", "message", "delta", "content", "text", "type", "usage", "tool_calls", "function", "index",
        "finish_reason", "error", "prompt_tokens", "completion_tokens", "arguments", "name", "id"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.floats(),
                    st.sampled_from([1e30, 1e308, -1, 0.5, 10**400, "", "12", "stop", "text"]),
                    st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), inner,
                                                 max_size=3)), max_leaves=8)
GARBAGE = st.sampled_from([b"", b"{", b"[" * 50_000, b"1" * 5_000, b"\xff\xfe\x00", b"null", b"[]", b'"text"',
                           b'{"choices": 1e999999}', b"NaN"])


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON-like ``node`` (the empty path first)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def _mutated(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    def put(path: tuple[Any, ...], value: Any) -> Any:
        if not path:
            return value
        data = copy.deepcopy(base)
        node: Any = data
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        return data

    return st.builds(put, st.sampled_from(paths(base)), VALUES)


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()  # NaN and Infinity too: servers do send them
    except (ValueError, OverflowError):
        return b"null"


BODIES = st.one_of(_mutated(BODY).map(_encode), VALUES.map(_encode), GARBAGE)
EVENT = st.one_of(_mutated(CHUNK).map(_encode), _mutated(LAST).map(_encode), VALUES.map(_encode), GARBAGE)
STREAMS = st.builds(
    lambda events, done: b"".join(b"data: " + e.replace(b"\n", b" ") + b"\n\n" for e in events)
    + (b"data: [DONE]\n\n" if done else b""),
    st.lists(EVENT, min_size=1, max_size=4), st.booleans())

#: A stream cut at any byte (a connection that ended mid-event, mid-line or mid-character).
CUT_STREAMS = st.builds(lambda body, at: body[:int(at * len(body))], STREAMS, st.floats(0, 1))
STATUSES = st.one_of(st.just(200), st.sampled_from([200, 201, 202, 204, 206, 301, 304, 400, 401, 403, 404,
                                                    405, 408, 409, 413, 415, 422, 429, 451, 499, 500,
                                                    501, 502, 503, 504, 520, 529, 599]))
_HEADER_VALUES = st.one_of(st.sampled_from(["0", "1", "-1", "0.5", "nan", "inf", "1e999", "", " ",
                                            "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999999999999",
                                            "gzip", "chunked", "close", "\u00e9"]),
                           st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12))
HEADERS = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after-ms", "x-ratelimit-remaining-requests",
                     "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
                     "x-request-id", "Content-Encoding", "X-Error-Code", "Set-Cookie"]),
    _HEADER_VALUES, max_size=3)


# Tool calls of every shape: each field missing, of the right type or any value.
_NAMES = st.one_of(st.sampled_from(["f", "get_weather", ""]), VALUES)
_ARGUMENTS = st.one_of(st.sampled_from(["{}", '{"a": 1}', "{", ""]), VALUES)
_FUNCTIONS = st.one_of(st.fixed_dictionaries({}, optional={"name": _NAMES, "arguments": _ARGUMENTS}), VALUES)
_TOOL_CALL = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.just("t1"), VALUES), "type": st.sampled_from(["function", "custom", 3]),
    "function": _FUNCTIONS, "index": st.one_of(st.integers(0, 2), VALUES)})
_TOOL_CALLS = st.one_of(st.lists(_TOOL_CALL, max_size=3), VALUES)


def _tool_call_body(calls: Any) -> bytes:
    body = copy.deepcopy(BODY)
    body["choices"][0]["message"]["tool_calls"] = calls
    return _encode(body)


def _tool_call_stream(pieces: list[Any]) -> bytes:
    events = []
    for calls in pieces:
        chunk = copy.deepcopy(CHUNK)
        chunk["choices"][0]["delta"] = {"content": "", "tool_calls": calls}
        events.append(_encode(chunk))
    events.append(_encode(LAST))
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


#: (stream?, body): an answer whose tool calls (or a stream's pieces of them) have any shape.
TOOL_CALL_ANSWERS = st.one_of(st.tuples(st.just(False), _TOOL_CALLS.map(_tool_call_body)),
                              st.tuples(st.just(True), st.lists(_TOOL_CALLS, min_size=1, max_size=3)
                                        .map(_tool_call_stream)))


def check_tool_calls(calls: Any) -> None:
    """Each of ``calls`` is a tool call a caller can run: a name, arguments as text."""
    for call in calls:
        assert isinstance(call.name, str) and call.name, call
        assert isinstance(call.arguments, str), call
        assert isinstance(call.id, str), call


class Lent:
    """A provider lent to one manager after another: their ``aclose`` leaves it open (a new
    HTTP client per example would spend 0.1 s loading CA certificates)."""

    def __init__(self, provider: Any) -> None:
        self.provider, self.name = provider, provider.name

    async def list_models(self) -> Any:
        return []

    async def complete(self, model: Any, request: Any) -> Any:
        return await self.provider.complete(model, request)

    def stream(self, model: Any, request: Any) -> Any:
        return self.provider.stream(model, request)

    async def aclose(self) -> None:
        pass
