"""Token counts for requests and answers: tiktoken where the model's encoding is known (exact,
offline), the core's byte-level upper bound otherwise (marked as an estimate)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from squirrel_models.tokens import upper_bound
from squirrel_models.types import IMAGE_TOKENS, AIRequest, TokenCount, ToolCall, Usage
from squirrel_models.upstream import message_dict, tool_call_dict

from ._count import _REPLY_PRIMING, TEXT_COUNTS, _framing, count_chat_tokens_detailed, count_text_tokens
from ._tiktoken_offline import OFFLINE_ENCODINGS, ensure_offline_encodings, get_encoding_for_model

if TYPE_CHECKING:
    import tiktoken

__all__ = ["IMAGE_TOKENS_BY_FAMILY", "base_name", "count_request", "count_text", "encoding_for",
           "image_tokens", "message_dict", "tool_call_dict", "tool_calls_text", "usage_for"]


def base_name(model: str) -> str:
    """``openai/gpt-4o`` (OpenRouter style) -> ``gpt-4o``: what tokenizers and price lists know."""
    return model.rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=512)
def encoding_for(model: str, encoding: str | None = None) -> tiktoken.Encoding | None:
    """The tiktoken encoding for ``model`` (or the named ``encoding``), None if unknown. Offline."""
    if encoding is not None:
        if encoding not in OFFLINE_ENCODINGS:
            return None
        import tiktoken

        ensure_offline_encodings()
        return tiktoken.get_encoding(encoding)
    return get_encoding_for_model(base_name(model))


#: The most one image adds to a prompt, for the OpenAI families where that is above the core's
#: allowance (:data:`~squirrel_models.types.IMAGE_TOKENS`, 2,048), by OpenAI's published
#: rules. Tiles: high detail resizes an image to fit 2,048 px and to 768 px on its short side,
#: so at most 8 tiles of 512 px, each billed ``tile`` tokens over ``base`` (gpt-4o: 85 + 8 x
#: 170 = 1,445; gpt-4o-mini bills 2,833 + 8 x 5,667 = 48,169 at a per-token price 33 times
#: lower). Patches: at most 1,536 patches of 32 px times the family's multiplier. The longest
#: matching prefix of the model's base name wins.
IMAGE_TOKENS_BY_FAMILY = {
    "gpt-4o-mini": 2833 + 8 * 5667,
    "gpt-4.1-mini": 2489,  # 1,536 x 1.62
    "gpt-5-mini": 2489,  # 1,536 x 1.62
    "o4-mini": 2642,  # 1,536 x 1.72
    "gpt-4.1-nano": 3779,  # 1,536 x 2.46
    "gpt-5-nano": 3779,  # 1,536 x 2.46
}


def image_tokens(model: str) -> int:
    """The most one image adds to a prompt of ``model``: its family's bound where OpenAI
    bills more than the core's allowance, else the allowance."""
    name = base_name(model)
    family = max((f for f in IMAGE_TOKENS_BY_FAMILY if name.startswith(f)), key=len, default=None)
    return IMAGE_TOKENS if family is None else max(IMAGE_TOKENS, IMAGE_TOKENS_BY_FAMILY[family])


def count_request(model: str, request: AIRequest, encoding: str | None = None) -> TokenCount | None:
    """Prompt tokens of ``request`` for ``model``, message framing and tools included.

    ``exact`` is False when the framing is approximate (tools, unverified model families):
    see :mod:`squirrel_models_openai._count`. None when the encoding is unknown.
    """
    enc = encoding_for(model, encoding)
    if enc is None:
        return None
    name = base_name(model)
    plain = None if request.tools else _plain_count(enc, request, name)
    if plain is not None:
        tokens, approximate = plain, False
    else:
        tools = [dict(t) for t in request.tools] or None
        c = count_chat_tokens_detailed(enc, [message_dict(m) for m in request.messages], tools,
                                       name)
        tokens, approximate = c.tokens, c.approximate
    if request.images:  # tiktoken cannot count an image: the most one adds, for each
        tokens += image_tokens(model) * sum(len(m.images) for m in request.messages)
        approximate = True
    rf = request.response_format
    if rf is not None and rf.schema is not None:  # billed as prompt, in an unpublished framing
        tokens += len(enc.encode(json.dumps(rf.to_openai(), ensure_ascii=False), disallowed_special=()))
        approximate = True
    method = f"tiktoken {enc.name}" + (" (approximate framing)" if approximate else "")
    return TokenCount(tokens, exact=not approximate, method=method)


def _plain_count(enc: tiktoken.Encoding, request: AIRequest, model: str) -> int | None:
    """:func:`~squirrel_models_openai._count.count_chat_tokens_detailed`'s count of the
    request's messages, without tools, when each message is plain text (a role and a string
    content, nothing else) and the framing of ``model`` is verified (an exact count): the same
    sum, without building each message's dict. None for any other request."""
    per_message, _, verified = _framing(model)
    if not verified:
        return None
    known, count = TEXT_COUNTS.known(enc), TEXT_COUNTS.count
    total = _REPLY_PRIMING
    for m in request.messages:
        role, content = m.role, m.content
        if type(content) is not str or type(role) is not str or m.name is not None \
                or m.tool_call_id is not None or m.tool_calls:
            return None
        n = known.get(role)
        total += per_message + (count(enc, role) if n is None else n)
        n = known.get(content)
        total += count(enc, content) if n is None else n
    return total


def count_text(model: str, text: str, encoding: str | None = None) -> TokenCount | None:
    """Tokens of an answer ``text``, exact; None when the encoding is unknown."""
    enc = encoding_for(model, encoding)
    if enc is None:
        return None
    return TokenCount(count_text_tokens(enc, text), exact=True, method=f"tiktoken {enc.name}")


def tool_calls_text(calls: Iterable[ToolCall]) -> str:
    """What tool calls add to an answer's output, for counting: each name and its arguments.
    The hidden framing OpenAI wraps them in is unpublished, so a count of it is approximate."""
    return "".join(c.name + c.arguments for c in calls)


def usage_for(model: str, request: AIRequest, text: str, encoding: str | None = None,
              context_window: int | None = None, tool_text: str = "") -> Usage:
    """Usage counted by the plugin, for a server that reported none: ``counted`` when both
    counts are exact, else ``estimated``: the core's byte upper bound stands in for unknown
    tokenizers, tightened by what the server enforced (no more output than ``max_tokens``,
    no more prompt than the context window it accepted). ``tool_text`` is the answer's tool
    calls (:func:`tool_calls_text`): counted as output, and never exact."""
    prompt = count_request(model, request, encoding)
    output = count_text(model, text + tool_text, encoding)
    if output is not None and tool_text:
        output = TokenCount(output.tokens, exact=False, method=output.method + " (tool calls approximate)")
    if prompt is None:
        bound = upper_bound(request).tokens
        prompt = TokenCount(min(bound, context_window) if context_window else bound, exact=False)
    if output is None:
        bound = upper_bound(text=text + tool_text).tokens
        output = TokenCount(min(bound, request.max_tokens) if request.max_tokens else bound, exact=False)
    exact = prompt.exact and output.exact
    return Usage(prompt.tokens, output.tokens, source="counted" if exact else "estimated")
