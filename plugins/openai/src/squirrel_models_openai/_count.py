"""Count prompt tokens for OpenAI chat requests with tiktoken, locally.

Follows the OpenAI cookbook "How to count tokens with tiktoken":

* every message costs ``3`` tokens of framing plus the tokens of each field value
  (``role``, ``content``, ``name``...); a ``name`` field costs ``1`` more
  (``gpt-3.5-turbo-0301``: ``4`` and ``-1``);
* every reply is primed with ``<|start|>assistant<|message|>``: ``3`` tokens;
* tool (function) definitions are rendered by OpenAI into a hidden system
  text whose exact format is unpublished; the cookbook's per-function /
  per-property constants approximate it.

What is exact and what is not (reflected in :attr:`TokenCount.approximate`):

* :func:`count_text_tokens` is exact for the given encoding.
* Plain-text messages (string ``content``, optional ``name``) for the
  model families the cookbook checked against the API (gpt-3.5-turbo, gpt-4,
  gpt-4-turbo, gpt-4o, gpt-4o-mini) match ``usage.prompt_tokens``: exact.
* Approximate: any ``tools``; non-text content parts (images, audio, files:
  not counted at all); ``tool_calls`` / ``function_call`` in assistant
  messages; non-string values; other model families (o1/o3/o4, gpt-4.1,
  gpt-4.5, gpt-5, gpt-oss, unknown), for which the same framing is assumed.
* Never counted: ``tool_choice``, ``response_format`` JSON schemas and other
  request fields that OpenAI also bills as prompt tokens.

Special-token strings such as ``<|endoftext|>`` in user text are counted as
ordinary text, as the API does.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "TEXT_COUNTS",
    "TextCounts",
    "TokenCount",
    "count_chat_tokens",
    "count_chat_tokens_detailed",
    "count_text_tokens",
    "count_tools_tokens",
]

_REPLY_PRIMING = 3


@attrs.frozen
class TokenCount:
    """Result of a prompt-token count.

    Attributes:
        tokens: the count (never negative).
        approximate: False only when the count is expected to equal
            OpenAI's ``usage.prompt_tokens`` exactly.
        reasons: why the count is approximate (empty when exact).
    """

    tokens: int
    approximate: bool
    reasons: tuple[str, ...] = ()


@attrs.frozen
class _ToolConstants:
    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


# From the cookbook: gpt-4o / gpt-4o-mini, and gpt-3.5-turbo / gpt-4.
_TOOLS_O200K = _ToolConstants(func_init=7, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12)
_TOOLS_CL100K = _ToolConstants(func_init=10, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12)


def count_text_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    """Return the exact number of tokens of ``text`` in ``encoding``.

    Special-token strings (``<|endoftext|>``...) count as ordinary text instead
    of raising, which is how the API treats them inside message content.
    """
    return len(encoding.encode_ordinary(text))


class TextCounts:
    """Token counts of the texts a prompt is made of, remembered: the same role names, system
    prompt, earlier turns of a conversation and tool descriptions come back in request after
    request, and tiktoken encoded each of them again every time (8 encodings per request of
    a four-message chat). A count is a function of (encoding, text), so a remembered one is
    the exact count, as :func:`count_text_tokens` gives it.

    Bounded: texts longer than ``max_text`` characters are counted every time and never kept;
    the texts kept are in two generations (the newest, and the one before it), each of at
    most ``max_entries`` texts and ``max_chars`` characters, over all encodings; when the
    newest is full it becomes the older one and the older one is dropped, and a text found
    in the older one moves to the newest, so what keeps coming back stays. Encodings are
    told apart by identity (two objects of one name are counted apart).

    Reads take no lock: :meth:`known` hands out the newest generation's table of an encoding,
    whose entries are never changed, only added (a table of an older generation still
    answers right; it only stops growing). The lock orders the writers (threads of the sync
    API, several event loops); a read that races with a write at worst counts again."""

    __slots__ = ("_chars", "_entries", "_lock", "_old", "_young", "max_chars", "max_entries",
                 "max_text")

    def __init__(self, max_entries: int = 4096, max_chars: int = 1 << 19,
                 max_text: int = 1 << 15) -> None:
        self.max_entries, self.max_chars, self.max_text = max_entries, max_chars, max_text
        self._young: dict[tiktoken.Encoding, dict[str, int]] = {}
        self._old: dict[tiktoken.Encoding, dict[str, int]] = {}
        self._chars = self._entries = 0
        self._lock = threading.Lock()

    def known(self, encoding: tiktoken.Encoding) -> Mapping[str, int]:
        """The counts of ``encoding`` in the newest generation: look a text up here first
        (one dict lookup), and call :meth:`count` when it is missing. Do not change it."""
        return self._young.get(encoding) or _NOTHING

    def count(self, encoding: tiktoken.Encoding, text: str) -> int:
        """:func:`count_text_tokens` of ``text``, remembered (if it is short enough)."""
        size = len(text)
        if size > self.max_text:
            return len(encoding.encode_ordinary(text))
        table = self._young.get(encoding)
        n = None if table is None else table.get(text)
        if n is not None:
            return n
        table = self._old.get(encoding)
        n = None if table is None else table.get(text)
        if n is None:
            n = len(encoding.encode_ordinary(text))
        with self._lock:
            if self._entries >= self.max_entries or self._chars + size > self.max_chars:
                self._old, self._young, self._chars, self._entries = self._young, {}, 0, 0
            table = self._young.get(encoding)
            if table is None:
                table = self._young[encoding] = {}
            if text not in table:
                table[text] = n
                self._chars += size
                self._entries += 1
        return n

    def __len__(self) -> int:
        """How many texts are kept (a text in both generations counts twice)."""
        return sum(len(t) for t in self._young.values()) + sum(len(t) for t in self._old.values())

    @property
    def chars(self) -> int:
        """How many characters of text are kept: at most ``2 * max_chars``."""
        return sum(len(k) for g in (self._young, self._old) for t in g.values() for k in t)

    def clear(self) -> None:
        with self._lock:
            self._young, self._old, self._chars, self._entries = {}, {}, 0, 0


_NOTHING: Mapping[str, int] = MappingProxyType({})
#: The prompt counts of this process (at most about 1 MB of ASCII text and 8,192 texts).
TEXT_COUNTS = TextCounts()
_counted = TEXT_COUNTS.count


def _base_model(model: str) -> str:
    """``ft:gpt-4o-mini-2024-07-18:org::id`` -> ``gpt-4o-mini-2024-07-18``."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def _is_verified_family(model: str) -> bool:
    """Model families whose message framing the cookbook verified against the API."""
    m = _base_model(model)
    if m.startswith(("gpt-3.5-turbo", "gpt-35-turbo", "gpt-4o")):
        return True
    return m == "gpt-4" or m.startswith("gpt-4-")


@functools.lru_cache(maxsize=256)
def _framing(model: str) -> tuple[int, int, bool]:
    """(tokens_per_message, tokens_per_name, whether the framing is verified) of ``model``:
    asked for every request, and the same for every request to the model."""
    return (*_message_constants(model), _is_verified_family(model))


def _message_constants(model: str) -> tuple[int, int]:
    """Return (tokens_per_message, tokens_per_name)."""
    if _base_model(model) == "gpt-3.5-turbo-0301":
        return 4, -1  # <|start|>{role/name}\n{content}<|end|>\n; a name replaces the role
    return 3, 1


def _count_value(encoding: tiktoken.Encoding, value: Any, reasons: set[str]) -> int:
    """Tokens of one message field value, noting approximations in ``reasons``."""
    if value is None:
        return 0
    if isinstance(value, str):
        return _counted(encoding, value)
    if isinstance(value, Mapping):
        reasons.add("structured message field (e.g. function_call) counted as the sum of its strings")
        return sum(_count_value(encoding, v, reasons) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_part(encoding, part, reasons) for part in value)
    reasons.add(f"non-string message value of type {type(value).__name__} counted as its str()")
    return _counted(encoding, str(value))


def _count_part(encoding: tiktoken.Encoding, part: Any, reasons: set[str]) -> int:
    """Tokens of one element of a list-valued field (content parts, tool_calls)."""
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return _counted(encoding, part["text"])
        if kind in ("image_url", "input_image", "input_audio", "file", "input_file"):
            reasons.add(f"{kind} content parts are not counted")
            return 0
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            return _counted(encoding, part["refusal"])
        reasons.add("tool calls / unknown content parts counted as the sum of their strings")
        return sum(_count_value(encoding, v, reasons) for v in part.values())
    return _count_value(encoding, part, reasons)


def _tool_constants(encoding: tiktoken.Encoding) -> _ToolConstants:
    return _TOOLS_CL100K if encoding.name == "cl100k_base" else _TOOLS_O200K


def _strip_final_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def count_tools_tokens(encoding: tiktoken.Encoding, tools: Iterable[Mapping[str, Any]] | None) -> int:
    """Estimate the prompt tokens added by tool (function) definitions.

    This is always an APPROXIMATION: the cookbook's formula, which matched the
    API for simple flat schemas on gpt-3.5-turbo, gpt-4, gpt-4o and
    gpt-4o-mini. Per function: ``func_init`` + tokens of ``"name:description"``
    (final period dropped); if it has properties, ``prop_init`` plus, per
    top-level property, ``prop_key`` + tokens of ``"name:type:description"``
    and, for an ``enum``, ``enum_init`` + ``enum_item`` + tokens per item; then
    ``func_end`` once for the whole list. Constants are the cl100k ones
    (func_init 10) for cl100k_base encodings and the gpt-4o ones (func_init 7)
    otherwise. Nested object/array schemas, ``anyOf``, defaults, ``strict`` and
    ``tool_choice`` are not counted.

    Accepts both ``{"type": "function", "function": {...}}`` tools and bare
    legacy ``functions`` entries ``{"name": ..., "parameters": ...}``; entries
    of other tool types (built-in tools) are ignored.

    Returns:
        The estimate, ``0`` for no tools.
    """
    if not tools:
        return 0
    c = _tool_constants(encoding)
    total = 0
    n_functions = 0
    for tool in tools:
        function = tool.get("function") if "function" in tool else tool
        if not isinstance(function, Mapping) or "name" not in function:
            continue
        n_functions += 1
        total += c.func_init
        desc = _strip_final_period(str(function.get("description") or ""))
        total += _counted(encoding, f"{function['name']}:{desc}")
        params = function.get("parameters")
        properties = params.get("properties") if isinstance(params, Mapping) else None
        if isinstance(properties, Mapping) and properties:
            total += c.prop_init
            for p_name, prop in properties.items():
                prop = prop if isinstance(prop, Mapping) else {}
                total += c.prop_key
                enum = prop.get("enum")
                if isinstance(enum, list):
                    total += c.enum_init
                    for item in enum:
                        total += c.enum_item
                        total += _counted(encoding, item if isinstance(item, str) else json.dumps(item))
                p_type = prop.get("type", "")
                if not isinstance(p_type, str):
                    p_type = json.dumps(p_type)
                p_desc = _strip_final_period(str(prop.get("description") or ""))
                total += _counted(encoding, f"{p_name}:{p_type}:{p_desc}")
    return total + c.func_end if n_functions else 0


def count_chat_tokens_detailed(
    encoding: tiktoken.Encoding,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    model: str,
) -> TokenCount:
    """Count the prompt tokens of a chat request and say whether the count is exact.

    Args:
        encoding: the model's tiktoken encoding (see
            ``_tiktoken_offline.get_encoding_for_model``).
        messages: OpenAI chat messages (dicts with ``role``, ``content``...).
            ``content`` may be a string, ``None`` or a list of content parts.
        tools: OpenAI ``tools`` list, or ``None``.
        model: the model name; selects per-message constants and tells whether
            the framing is verified for this family.

    Returns:
        A :class:`TokenCount`; ``approximate`` is True with reasons whenever tools,
        non-text parts, tool calls or an unverified model family are involved.
    """
    reasons: set[str] = set()
    per_message, per_name, verified = _framing(model)
    known, count = TEXT_COUNTS.known(encoding), TEXT_COUNTS.count
    total = 0
    for message in messages:
        total += per_message
        for key, value in message.items():
            if type(value) is str:  # most fields: a remembered count is one lookup
                n = known.get(value)
                total += count(encoding, value) if n is None else n
            else:
                total += _count_value(encoding, value, reasons)
            if key == "name":
                total += per_name
            elif key == "tool_call_id":
                reasons.add("tool result message framing is not verified")
    total += _REPLY_PRIMING
    if tools:
        total += count_tools_tokens(encoding, tools)
        reasons.add("tool definitions estimated with the OpenAI cookbook formula")
    if not verified:
        reasons.add(f"message framing not verified for model {model!r}; gpt-4o framing assumed")
    if not reasons:
        return TokenCount(max(total, 0), False)
    return TokenCount(tokens=max(total, 0), approximate=True, reasons=tuple(sorted(reasons)))


def count_chat_tokens(
    encoding: tiktoken.Encoding,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    model: str,
) -> int:
    """Return the prompt-token count of a chat request (see :func:`count_chat_tokens_detailed`).

    Exact only for plain-text messages on cookbook-verified models without tools;
    use :func:`count_chat_tokens_detailed` to learn whether a count is approximate.
    """
    return count_chat_tokens_detailed(encoding, messages, tools, model).tokens
