"""Tool calls read from an upstream's OpenAI-format answer, shared by provider plugins.

A tool call the caller cannot run is not a tool call: one whose ``function`` is not an object,
whose name is missing, empty or not a string, or whose arguments are not JSON text (a number,
say) is a :class:`MalformedResponse`, which the fallback chain handles like any malformed
answer. Before, both HTTP providers passed such a call on with ``name=""``. In a stream the
first piece of each call (by ``index``) carries its name, as the protocol sends it; later
pieces may leave it out.

An entry of another kind (``"type"`` another string, no ``function``) is left out: a kind
this project does not run. Values may be plain JSON objects or huggingface_hub's output
objects (dicts too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import MalformedResponse
from .messages import ToolCall, ToolCallDelta
from .upstream import MAPPING, arguments_text, text_or_none

__all__ = ["tool_call_deltas", "tool_calls"]


def _entries(value: Any, what: str) -> list[Any]:
    if not value:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    raise MalformedResponse(f"{what} is not a list")


def _function(entry: Any, what: str, *, delta: bool) -> Mapping[str, Any] | None:
    """``entry``'s ``function`` object; None for an entry of another kind (or a stream
    piece without one)."""
    if not isinstance(entry, MAPPING):
        raise MalformedResponse(f"a {what} is not an object")
    fn = entry.get("function")
    if fn is None:
        kind = entry.get("type")
        if delta or (isinstance(kind, str) and kind != "function"):
            return None
        raise MalformedResponse(f"a {what} has no function object")
    if not isinstance(fn, MAPPING):
        raise MalformedResponse(f"a {what}'s function is not an object")
    return fn


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedResponse("a tool call's name is missing, empty or not a string")
    return value


def tool_calls(value: Any) -> tuple[ToolCall, ...]:
    """The :class:`ToolCall` objects of a message's ``tool_calls`` (a list; missing or empty:
    none)."""
    calls = []
    for entry in _entries(value, "tool_calls"):
        fn = _function(entry, "tool call", delta=False)
        if fn is not None:
            calls.append(ToolCall(text_or_none(entry.get("id"), "id") or "", _name(fn.get("name")),
                                  arguments_text(fn.get("arguments"))))
    return tuple(calls)


def tool_call_deltas(value: Any, named: set[int]) -> tuple[ToolCallDelta, ...]:
    """The pieces of a stream delta's ``tool_calls``, keyed by ``index`` (the position when
    absent). ``named``: the indices whose first piece (with the name) came already; this
    adds the new ones."""
    out = []
    for i, entry in enumerate(_entries(value, "delta tool_calls")):
        fn = _function(entry, "tool call delta", delta=True)
        index = entry.get("index")
        index = i if index is None else index
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise MalformedResponse("tool call delta index is not an index")
        fn = fn if fn is not None else {}
        if index in named:
            name = text_or_none(fn.get("name"), "name") or None
        else:
            name = _name(fn.get("name"))
            named.add(index)
        out.append(ToolCallDelta(index, text_or_none(entry.get("id"), "id") or None, name,
                                 arguments_text(fn.get("arguments"))))
    return tuple(out)
