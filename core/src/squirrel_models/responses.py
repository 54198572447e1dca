"""What comes back: usage and token counts, stream chunks, provider responses, attempts and the
answer to a request."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .errors import MalformedResponse, shown
from .messages import ToolCall, ToolCallDelta
from .trusted import builder, slot_init

if TYPE_CHECKING:
    from .ratelimit import UpstreamLimits

__all__ = ["MAX_USAGE_TOKENS", "AIResponse", "AttemptRecord", "Choice", "ProviderResponse",
           "StreamChunk", "TokenCount", "Usage", "UsageSource"]

UsageSource = Literal["reported", "counted", "estimated", "cut"]
#: The most tokens one attempt's usage may count in any field: 2**31 - 1, far above any
#: context window (the largest are about 10**7) and small enough that no price makes its cost
#: absurd. A provider reporting more (or a negative, fractional or boolean count) sent a
#: malformed answer: :class:`Usage` raises :class:`MalformedResponse`.
MAX_USAGE_TOKENS = 2**31 - 1
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
_USAGE_SOURCES = frozenset({"reported", "counted", "estimated", "cut"})


def _answered(err: MalformedResponse) -> MalformedResponse:
    """A usage that cannot be came with an answer: the upstream may have billed the call
    (``sent``), so the attempt is charged as one left unanswered, never $0."""
    err.sent = True
    return err


@attrs.frozen
class TokenCount:
    """A token count and whether it is exact (from the model's tokenizer) or an upper bound."""

    tokens: int
    exact: bool
    method: str = ""

    def __str__(self) -> str:
        return f"{self.tokens}" if self.exact else f"<= {self.tokens}"


@slot_init
@attrs.frozen
class Usage:
    """Tokens an attempt used.

    ``input_tokens`` includes ``cached_tokens``; ``output_tokens`` includes
    ``reasoning_tokens`` (the OpenAI convention), so cost never double counts them.
    ``source`` says where the numbers come from: ``reported`` by the provider, ``counted`` by
    the plugin with the model's tokenizer, ``estimated`` (an upper bound), or ``cut``: an
    attempt whose answer never arrived, charged what ``[budget] charge_unanswered`` assumes
    it used (see :mod:`squirrel_models.unanswered`), an assumption rather than a count.

    Usage mostly comes from upstream answers, so it is validated where it is made: every
    count is an int (not a bool) in ``0..MAX_USAGE_TOKENS``, else :class:`MalformedResponse`
    (a :class:`ModelError`: the attempt failed and the fallback chain decides what follows).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "reported"

    def __attrs_post_init__(self) -> None:
        i, o, c, r = self.input_tokens, self.output_tokens, self.cached_tokens, self.reasoning_tokens
        # The usual case in one expression (``type(n) is int`` leaves out bools and int
        # subclasses, which the loop below then judges): every usage of every answer is built here.
        if (type(i) is int and type(o) is int and type(c) is int and type(r) is int
                and 0 <= i <= MAX_USAGE_TOKENS and 0 <= o <= MAX_USAGE_TOKENS
                and 0 <= c <= MAX_USAGE_TOKENS and 0 <= r <= MAX_USAGE_TOKENS
                and type(self.source) is str and self.source in _USAGE_SOURCES):
            return
        for name in _USAGE_FIELDS:
            n = getattr(self, name)
            if (isinstance(n, bool) or not isinstance(n, int)
                    or not 0 <= n <= MAX_USAGE_TOKENS):
                raise _answered(MalformedResponse(
                    f"usage.{name} must be a whole number of tokens in "
                    f"0..{MAX_USAGE_TOKENS}, got {shown(n, 40)}"))
        if not isinstance(self.source, str) or self.source not in _USAGE_SOURCES:
            raise _answered(MalformedResponse(f"usage.source must be reported, counted, estimated "
                                              f"or cut, got {shown(self.source, 40)}"))

    @classmethod
    def from_report(cls, prompt: int, completion: int, cached: int = 0, reasoning: int = 0,
                    total: int | None = None) -> Usage:
        """The ``reported`` usage of an OpenAI-style ``usage`` object's counts (each validated
        as in the class; ``total`` is ``total_tokens``, None when absent), as it is billed.

        OpenAI counts cached prompt tokens inside ``prompt_tokens`` and reasoning tokens inside
        ``completion_tokens``. Servers that count a part apart are read so that nothing billed
        is missed: more cached (reasoning) tokens than prompt (completion) tokens are added to
        them; and a ``total`` above prompt plus completion holds tokens the parts left out
        (Gemini's thoughts through OpenAI-compatible proxies: ``completion_tokens`` without
        them, ``total_tokens`` with them). That gap is charged as output: what a provider bills
        beyond the visible answer is its model's thoughts, and output is the dearer side, so
        even a gap that was cached tokens counted apart from the prompt is never charged less
        than it cost. A ``total`` below the parts is left aside (the parts are billed), and so is
        one without a prompt count (it holds the prompt too, whose count the core then makes:
        see :meth:`~squirrel_models.tokens.TokenManager.credible`).
        """
        usage = cls(prompt, completion, cached, reasoning, "reported")  # validates the parts
        if total is not None and (type(total) is not int or not 0 <= total <= MAX_USAGE_TOKENS):
            raise _answered(MalformedResponse(
                f"usage.total_tokens must be a whole number of tokens in 0..{MAX_USAGE_TOKENS}, "
                f"got {shown(total, 40)}"))
        if cached > prompt:
            prompt += cached
        if reasoning > completion:
            completion += reasoning
        if total is not None and prompt and total > prompt + completion:
            completion = total - prompt
        if prompt == usage.input_tokens and completion == usage.output_tokens:
            return usage
        return cls(prompt, completion, cached, reasoning, "reported")

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        order = ("reported", "counted", "estimated", "cut")
        worst = max(self.source, other.source, key=order.index)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            worst,
        )


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk of a provider stream carries ``usage``.
    ``tool_calls`` are pieces of tool calls (see :class:`ToolCallDelta`)."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    #: What the stream's rate-limit headers said (``squirrel_models.upstream.
    #: parse_rate_limits``); a provider sets it on one chunk, usually the last.
    rate_limits: UpstreamLimits | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Choice:
    """One of the answers to a request with ``n`` > 1 (``index`` 0 is the first)."""

    index: int
    text: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@attrs.frozen
class ProviderResponse:
    """What a provider returns for one attempt: text, usage, why generation stopped and the
    tool calls the model made (``finish_reason`` is then usually ``"tool_calls"``).

    For a request with ``n`` > 1, ``choices`` holds every answer (the first is also ``text``,
    ``finish_reason`` and ``tool_calls``) and ``usage`` counts them all."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    raw_model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    choices: tuple[Choice, ...] = ()
    #: What the answer's rate-limit headers said (``squirrel_models.upstream.
    #: parse_rate_limits``), for the core to respect limits nobody configured.
    rate_limits: UpstreamLimits | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class AttemptRecord:
    """One attempt, for explanations and ledgers: ``ok`` or ``error`` (an upstream call),
    ``refused`` (a budget or ceiling said no before any call), ``skipped`` (breaker open)."""

    number: int
    model_id: str
    provider: str
    outcome: Literal["ok", "error", "refused", "skipped"]
    error: BaseException | None = attrs.field(default=None, eq=False)
    usage: Usage | None = None
    cost: Decimal | None = None
    latency_s: float = 0.0
    note: str = ""


@attrs.frozen
class AIResponse:
    """The answer to a request: what was said, by which model, for how much and why.

    ``cost`` is None only when the model is unpriced and that was explicitly allowed.
    ``decision`` is the selection record; ``attempts`` every upstream attempt in order.
    ``tool_calls`` are the function calls the model asked for (``text`` may then be empty);
    send them back with ``Message.assistant(text, tool_calls)`` and one ``Message.tool`` each.
    ``choices`` holds every answer of a request with ``n`` > 1.
    """

    text: str
    model: str
    usage: Usage
    cost: Decimal | None
    decision: Any  # selection.Decision; typed loosely to keep import order simple
    attempts: Sequence[AttemptRecord]
    finish_reason: str | None = None
    request_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    _choices: tuple[Choice, ...] = attrs.field(default=(), alias="choices")

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every answer: one, or ``n`` for a request with ``n`` > 1 (the first is ``text``,
        ``finish_reason`` and ``tool_calls``). ``usage`` and ``cost`` cover them all."""
        return self._choices or (Choice(0, self.text, self.finish_reason, self.tool_calls),)

    def to_openai(self, *, id: str | None = None, created: int | None = None,
                  model: str | None = None) -> dict[str, Any]:
        """This answer as an OpenAI ``chat.completion`` object (a JSON-ready dict): text, tool
        calls, finish reason and usage; ``id`` defaults to ``chatcmpl-<request_id>``."""
        return _response_to_openai()(self, id=id, created=created, model=model)


@functools.cache
def _response_to_openai() -> Callable[..., dict[str, Any]]:
    # Imported on first use (openai_format imports this module), then kept: the gateway
    # answers every request through here, and an import statement costs about 0.8 us a call.
    from .openai_format import response_to_openai

    return response_to_openai


#: :class:`AttemptRecord` and :class:`AIResponse` built by the manager from its own parts
#: (``trusted.builder``: the same values, without ``object.__setattr__`` per field).
new_attempt_record = builder(AttemptRecord)
new_response = builder(AIResponse)
#: :class:`ProviderResponse` and :class:`StreamChunk` as providers build them from parts they
#: checked (the :class:`Usage` in them checks itself when built).
new_provider_response = builder(ProviderResponse)
new_chunk = builder(StreamChunk)
