"""What a provider plugin hands the core, checked where it enters (internal).

A provider is code the core does not control, and the core's promises hold whatever it does:
budgets hold, a failed attempt is charged what it may have cost (never a silent $0), a request
ends in a :class:`~squirrel_models.errors.SquirrelError` naming the provider and the model,
never a ``TypeError`` from deep inside. So each value a provider hands over is checked once,
where it enters, and the rest of the core trusts it:

- an answer of ``complete`` (:func:`answer_problem`) and each chunk of ``stream``
  (:func:`chunk_problem`): a value of another shape (``None``, a dict, a text that is no
  ``str``, tool calls that are no ``ToolCall``...) fails the attempt with the
  :class:`MalformedResponse` of :func:`malformed`, naming the provider. The call was made and
  answered, so the upstream may have billed it: the error says ``sent = True`` and carries
  the answer's usage when that is a :class:`Usage`, and the attempt is charged (that usage,
  else ``[budget] charge_unanswered``); a stream already under way ends with a
  :class:`MidStreamError`, charged what it received;
- what a provider raises (:func:`checked_error`): a ``ModelError``'s context fields set by
  the plugin (``retry_after``, ``usage``, ``cost``, ``status_code``...) are the core's to
  trust only when they are what they say; one that is not is dropped, with a warning naming
  the provider (the error and its fallback stay as they are), and ``model_id`` and
  ``provider`` name the model the core called;
- a model card ``list_models`` lists (:func:`card_problem`), when the manager starts or
  reloads: the card is left out with a logged reason (an error in strict mode);
- a provider's optional ``live_stats`` (:func:`live_problem`): ones that raise or are junk
  are none (logged once; strict mode: an error);
- a token count of the ``count_tokens`` hook (:func:`count_problem`): an answer that is no
  count, or one no tokenizer can give, is the hook's failure (logged, the next plugin or the
  core's upper bound counts instead; strict mode: an error).

The check of a well-formed answer or chunk is a few type comparisons.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .errors import MalformedResponse, ModelError, shown
from .messages import ToolCall, ToolCallDelta
from .providers import MAX_TOKENS
from .ratelimit import UpstreamLimits, limits_problem
from .responses import MAX_USAGE_TOKENS, Choice, ProviderResponse, StreamChunk, TokenCount, Usage

__all__ = ["answer_problem", "card_problem", "checked_error", "chunk_problem", "count_problem",
           "live_problem", "malformed"]

log = logging.getLogger("squirrel_models")

_TEXT_OR_NONE = (str, type(None))


def _kind(value: object) -> str:
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _text_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _seconds(value: object) -> bool:
    """A finite, non-negative number of seconds (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _count(value: object, top: int = MAX_USAGE_TOKENS) -> bool:
    return type(value) is int and 0 <= value <= top


def _sequence_of(value: object, kind: type) -> bool:
    return isinstance(value, tuple | list) and all(isinstance(v, kind) for v in value)


def _limits_problem(limits: object) -> str | None:
    if limits is None or type(limits) is UpstreamLimits:
        return None  # it checked itself when built (the core's parser: from checked numbers)
    if not isinstance(limits, UpstreamLimits):
        return f"rate_limits {_kind(limits)}, not UpstreamLimits"
    problem = limits_problem(limits)  # a subclass: its own __init__ may not have checked
    return None if problem is None else f"rate_limits.{problem}"


def _calls_problem(calls: object) -> str | None:
    if not _sequence_of(calls, ToolCall):
        return f"tool_calls {shown(calls)}, not ToolCalls"
    for c in calls:  # type: ignore[attr-defined]
        if not (isinstance(c.id, str) and isinstance(c.name, str) and isinstance(c.arguments, str)):
            return f"a tool call {shown(c)} whose id, name or arguments is no str"
    return None


def answer_problem(resp: object) -> str | None:
    """What is wrong with what a provider's ``complete`` returned, None if it is a
    well-formed :class:`ProviderResponse` (the usual answer: a few type comparisons)."""
    if (type(resp) is ProviderResponse and type(resp.text) is str and type(resp.usage) is Usage
            and type(resp.finish_reason) in _TEXT_OR_NONE
            and not resp.tool_calls and not resp.choices
            and (resp.rate_limits is None or type(resp.rate_limits) is UpstreamLimits)):
        return None  # (UpstreamLimits and Usage checked themselves when built)
    if not isinstance(resp, ProviderResponse):
        return f"{_kind(resp)}, not a ProviderResponse"
    if not isinstance(resp.usage, Usage):
        return f"a ProviderResponse whose usage is {shown(resp.usage)}, not a Usage"
    if not isinstance(resp.text, str):
        return f"a ProviderResponse whose text is {shown(resp.text)}, not a str"
    if not _text_or_none(resp.finish_reason):  # (raw_model is not read: not checked)
        return f"a ProviderResponse whose finish_reason is {shown(resp.finish_reason)}, not a str"
    if resp.tool_calls:
        problem = _calls_problem(resp.tool_calls)
        if problem is not None:
            return f"a ProviderResponse with {problem}"
    if resp.choices:
        if not _sequence_of(resp.choices, Choice):
            return f"a ProviderResponse whose choices are {shown(resp.choices)}, not Choices"
        for c in resp.choices:
            if not (type(c.index) is int and isinstance(c.text, str) and _text_or_none(c.finish_reason)):
                return f"a ProviderResponse with a choice {shown(c)} of the wrong types"
            if c.tool_calls and (problem := _calls_problem(c.tool_calls)) is not None:
                return f"a ProviderResponse whose choice {c.index} has {problem}"
    problem = _limits_problem(resp.rate_limits)
    return None if problem is None else f"a ProviderResponse with {problem}"


def chunk_problem(chunk: object) -> str | None:
    """What is wrong with a chunk a provider's stream yielded, None if it is a well-formed
    :class:`StreamChunk` (the usual chunk, text only: a few type comparisons)."""
    if (type(chunk) is StreamChunk and type(chunk.text) is str and chunk.usage is None
            and chunk.finish_reason is None and not chunk.tool_calls and chunk.rate_limits is None):
        return None
    if not isinstance(chunk, StreamChunk):
        return f"a chunk that is {_kind(chunk)}, not a StreamChunk"
    if not isinstance(chunk.text, str):
        return f"a chunk whose text is {shown(chunk.text)}, not a str"
    if chunk.usage is not None and not isinstance(chunk.usage, Usage):
        return f"a chunk whose usage is {shown(chunk.usage)}, not a Usage"
    if not _text_or_none(chunk.finish_reason):
        return f"a chunk whose finish_reason is {shown(chunk.finish_reason)}, not a str"
    if chunk.tool_calls:
        if not _sequence_of(chunk.tool_calls, ToolCallDelta):
            return f"a chunk whose tool_calls are {shown(chunk.tool_calls)}, not ToolCallDeltas"
        for d in chunk.tool_calls:
            if not (_count(d.index) and _text_or_none(d.id) and _text_or_none(d.name)
                    and isinstance(d.arguments_fragment, str)):
                return f"a chunk with a tool call piece {shown(d)} of the wrong types"
    problem = _limits_problem(chunk.rate_limits)
    return None if problem is None else f"a chunk with {problem}"


def malformed(problem: str, provider: str, model_id: str, answer: object = None) -> MalformedResponse:
    """The error an answer (or chunk) of the wrong shape fails its attempt with: naming the
    provider and what was wrong, ``sent`` (the call was answered: the upstream may have billed
    it), with ``answer``'s usage when that is one (what the provider reported is charged)."""
    usage = getattr(answer, "usage", None)
    err = MalformedResponse(f"provider {provider!r} returned {problem} (a bug in its plugin)",
                            model_id=model_id, provider=provider,
                            usage=usage if isinstance(usage, Usage) else None)
    err.retryable = False  # the same plugin answers the same way: the next candidate may not
    err.sent = True
    return err


#: Stands for "the class's own default": the instance's value is removed.
_CLASS = object()

#: A ModelError's fields a plugin may set: what each must be to be trusted, and what it
#: becomes when it is not.
_FIELDS: tuple[tuple[str, Any, str, object], ...] = (
    ("retry_after", lambda v: v is None or _seconds(v), "seconds >= 0", None),
    ("status_code", lambda v: v is None or (type(v) is int and 100 <= v <= 999), "an HTTP status", None),
    ("retryable", lambda v: isinstance(v, bool), "a bool", _CLASS),
    ("sent", lambda v: v is None or isinstance(v, bool), "a bool or None", None),
    ("out_of_credit", lambda v: isinstance(v, bool), "a bool", _CLASS),
    ("usage", lambda v: v is None or isinstance(v, Usage), "a Usage", None),
    ("rate_limits", lambda v: _limits_problem(v) is None, "UpstreamLimits", None),
    # a subclass's own fields
    ("needed", lambda v: v is None or _count(v, 2**63 - 1), "a count of tokens", None),
    ("window", lambda v: v is None or _count(v, 2**63 - 1), "a count of tokens", None),
    ("model_specific", lambda v: isinstance(v, bool), "a bool", False),
    ("partial_text", lambda v: isinstance(v, str), "a str", ""),
)


def checked_error(exc: ModelError, model_id: str, provider: str) -> ModelError:
    """``exc``, raised by provider ``provider`` for model ``model_id``, made safe for the core
    to read, in place: a field the plugin set to what it cannot be (a ``retry_after`` of
    ``"5"`` or NaN, a ``usage`` that is no :class:`Usage`...) is dropped (its class's default,
    or None), with a warning naming the provider; ``cost`` is the core's to set (cleared);
    ``model_id`` and ``provider`` name what the core called. The usual error costs a look
    at each field it set."""
    exc.model_id, exc.provider = model_id, provider
    own = getattr(exc, "__dict__", None)
    if not own:
        return exc
    if own.get("cost") is not None:
        own["cost"] = None
    for name, ok, what, default in _FIELDS:
        if name in own and not ok(own[name]):
            log.warning("provider %r raised %s with %s = %s, not %s: ignored (a bug in its "
                        "plugin)", provider, type(exc).__name__, name, shown(own[name]), what)
            if default is _CLASS:
                del own[name]
            else:
                own[name] = default
    return exc


def card_problem(card: object, provider: str) -> str | None:
    """What is wrong with a model card provider ``provider``'s ``list_models`` listed, None if
    the core can route to it (checked once per card, at start-up and reload)."""
    from .cards import ModelCard, Price
    from .fieldchecks import _number_in

    if not isinstance(card, ModelCard):
        return f"lists {_kind(card)}, not a ModelCard"
    for name in ("id", "provider", "model", "provider_type"):
        v = getattr(card, name)
        if not isinstance(v, str):
            return f"lists a model whose {name} is {shown(v)}, not a str"
    if not card.model.strip() or not card.model.isprintable():
        # as ModelOverride.name: the model id reaches metric labels, headers, log lines
        return f"lists a model whose name {shown(card.model)} is empty or not printable"
    if card.provider != provider:
        return (f"lists {card.id if card.id.isprintable() else shown(card.id)}, which belongs "
                f"to provider {card.provider!r}")
    if card.id != f"{card.provider}/{card.model}":
        return (f"lists a model whose id {shown(card.id)} is not "
                f"{shown(card.provider + '/' + card.model)} (<provider>/<model>)")
    if not _count(card.context_window, MAX_TOKENS) or card.context_window == 0:
        return f"lists {card.id} with context_window {shown(card.context_window)}, not in 1..{MAX_TOKENS:,}"
    if card.max_output_tokens is not None and not (_count(card.max_output_tokens, MAX_TOKENS)
                                                   and card.max_output_tokens > 0):
        return (f"lists {card.id} with max_output_tokens {shown(card.max_output_tokens)}, "
                f"not None or in 1..{MAX_TOKENS:,}")
    price = card.price
    if price is not None:
        if not isinstance(price, Price):
            return f"lists {card.id} with price {shown(price)}, not a Price or None (unknown)"
        for name in ("input", "output", "cached_input"):
            v = getattr(price, name)
            if not (v is None and name == "cached_input") and not (
                    isinstance(v, Decimal) and v.is_finite() and v >= 0):
                return f"lists {card.id} with price.{name} {shown(v)}, not a finite Decimal >= 0"
    if card.quality is not None and not _number_in(card.quality, 0, 1):
        return f"lists {card.id} with quality {shown(card.quality)}, not in [0, 1]"
    if card.latency_ms is not None and not _number_in(card.latency_ms, 0, math.inf):
        return f"lists {card.id} with latency_ms {shown(card.latency_ms)}, not a finite number >= 0"
    for name in ("capabilities", "features", "tags"):
        v = getattr(card, name)
        if not (isinstance(v, frozenset) and all(isinstance(x, str) for x in v)):
            return f"lists {card.id} with {name} {shown(v)}, not a set of names"
    if not isinstance(card.metadata, Mapping):
        return f"lists {card.id} with metadata {shown(card.metadata)}, not a mapping"
    return None


def count_problem(count: object, least: int) -> str | None:
    """What is wrong with a ``count_tokens`` answer, None if it is a :class:`TokenCount` the
    core can use: a whole number of tokens in ``least..MAX_USAGE_TOKENS`` (``least``: what
    no tokenizer goes below for the text counted, see ``tokens.lower_bound``) and ``exact``
    a bool."""
    if type(count) is not TokenCount and not isinstance(count, TokenCount):
        return f"returned {_kind(count)}, not a TokenCount or None"
    n = count.tokens
    if not _count(n):
        return f"returned {shown(n)} tokens, not a whole number in 0..{MAX_USAGE_TOKENS}"
    if n < least:
        return (f"returned {n} tokens for a text no tokenizer makes fewer than {least} of "
                "(at most 128 bytes a token)")
    if not isinstance(count.exact, bool):
        return f"returned a count whose exact is {shown(count.exact)}, not a bool"
    return None


def live_problem(stats: object) -> str | None:
    """What is wrong with what a provider's ``live_stats`` returned, None if it is None or a
    mapping whose ``queue_depth`` and ``tokens_per_s`` (if any; the latter may be None) are
    finite numbers >= 0 (other keys are not read)."""
    if stats is None:  # nothing to say now
        return None
    if not isinstance(stats, Mapping):
        return f"returned {_kind(stats)}, not a mapping"
    depth = stats.get("queue_depth", 0.0)
    if not _seconds(depth):
        return f"returned queue_depth {shown(depth)}, not a finite number >= 0"
    speed = stats.get("tokens_per_s")
    if speed is not None and not _seconds(speed):
        return f"returned tokens_per_s {shown(speed)}, not a finite number >= 0"
    return None
