"""An answer of the usual shape decoded once, straight into what the response needs.

With msgspec installed (the core's ``fast`` extra), a ``chat.completion`` body is decoded into
typed structures in C: one choice with text content, token counts that are whole numbers in
range, the rest of the body skipped unread. Anything else (an error object, several choices,
content parts, counts as floats, the Responses API's field names, a body msgspec refuses...)
is not of that shape: :func:`plain_answer` returns None and the provider reads the body with
its generic path, whose checks decide, as they do without msgspec.
"""

# No ``from __future__ import annotations``: msgspec reads the annotations of the types made
# in _types(), which are local to it, so they must be objects, not strings.
from collections.abc import Callable
from typing import Any

from squirrel_models.fastjson import typed_decoder
from squirrel_models.responses import MAX_USAGE_TOKENS

__all__ = ["Plain", "plain_answer"]

#: (text, tool_calls as sent, finish_reason, model, refusal, (prompt, completion, cached,
#: reasoning, total or None) or None when the body has no usage)
Plain = tuple[str, Any, str | None, Any, Any, tuple[int, int, int, int, int | None] | None]


def _types() -> Any:
    from typing import Annotated

    import msgspec

    Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_USAGE_TOKENS)]

    class Details(msgspec.Struct):
        cached_tokens: Count | None = None
        reasoning_tokens: Count | None = None

    class Usage(msgspec.Struct):
        prompt_tokens: Count
        completion_tokens: Count
        total_tokens: Count | None = None
        prompt_tokens_details: Details | None = None
        completion_tokens_details: Details | None = None
        # The Responses API's names: present, they send the body to the generic path.
        input_tokens: Any = None
        output_tokens: Any = None
        input_tokens_details: Any = None
        output_tokens_details: Any = None

    class Message(msgspec.Struct):
        content: str | None = None
        tool_calls: Any = None
        refusal: Any = None
        # Reasoning sent apart from the content: counted by the generic path when the body
        # has no usage.
        reasoning_content: Any = None
        reasoning: Any = None

    class Choice(msgspec.Struct):
        message: Message
        finish_reason: str | None = None

    class Answer(msgspec.Struct):
        choices: list[Choice]
        model: Any = None
        usage: Usage | None = None
        error: Any = None

    return Answer


_DECODE: list[Callable[[bytes], Any] | None] = []


def plain_answer(body: bytes) -> Plain | None:
    """The parts of an answer of the usual shape (see the module docstring); None for any
    other body, or without msgspec."""
    if not _DECODE:
        _DECODE.append(typed_decoder(_types))
    decode = _DECODE[0]
    if decode is None:
        return None
    try:
        answer = decode(body)
    except (ValueError, RecursionError):  # not of the shape (msgspec's errors are ValueErrors)
        return None
    if answer.error or len(answer.choices) != 1:
        return None
    message = answer.choices[0].message
    u = answer.usage
    if u is None and (message.reasoning_content or message.reasoning):
        return None
    counts = None
    if u is not None:
        if (u.input_tokens is not None or u.output_tokens is not None
                or u.input_tokens_details is not None or u.output_tokens_details is not None):
            return None
        pd, cd = u.prompt_tokens_details, u.completion_tokens_details
        counts = (u.prompt_tokens, u.completion_tokens,
                  (pd.cached_tokens or 0) if pd is not None else 0,
                  (cd.reasoning_tokens or 0) if cd is not None else 0, u.total_tokens)
    return (message.content or "", message.tool_calls, answer.choices[0].finish_reason,
            answer.model, message.refusal, counts)
