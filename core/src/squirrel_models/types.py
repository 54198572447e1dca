"""Value types: requests, responses, usage, prices, model cards and requirements.

All are ``attrs.frozen``: hashable, comparable, safe to share between tasks and threads.
Money is :class:`decimal.Decimal` in US dollars; token counts are ints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import attrs

from .errors import InvalidRequest

__all__ = [
    "AIRequest",
    "AIResponse",
    "AttemptRecord",
    "Message",
    "ModelCard",
    "ModelRequirements",
    "Price",
    "ProviderResponse",
    "StreamChunk",
    "TokenCount",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = str | Mapping[str, Any]
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
UsageSource = Literal["reported", "counted", "estimated"]
MILLION = Decimal(1_000_000)


def _frozenset(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _decimal_or_none(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        value = repr(value)  # 0.1 -> Decimal("0.1"), not 0.1000000000000000055...
    return Decimal(value)


def _check_money(instance: Any, attribute: attrs.Attribute[Any], value: Decimal | None) -> None:
    if value is None:
        return
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"must be a finite amount >= 0, got {value}", field=attribute.name)


@attrs.frozen
class ToolCall:
    """A function call a model asked for. ``arguments`` is the JSON text the model produced,
    kept as is: it is not parsed or validated (models do produce invalid JSON)."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class ToolCallDelta:
    """A piece of a streamed tool call. Pieces with the same ``index`` make one call: ``id`` and
    ``name`` come once (the first non-empty value is kept), ``arguments_fragment`` pieces are
    joined in order. :class:`~squirrel_models.ResponseStream` assembles them into
    :class:`ToolCall` objects (``response.tool_calls``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_fragment: str = ""

    @classmethod
    def from_call(cls, index: int, call: ToolCall) -> ToolCallDelta:
        """A whole call as one delta (for a provider that gets complete calls)."""
        return cls(index, call.id, call.name, call.arguments)


def assemble_tool_calls(deltas: Iterable[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Complete calls from streamed pieces, ordered by ``index``. A call whose ``id`` or
    ``name`` never came gets ``""`` for it (some servers send no ids)."""
    parts: dict[int, list[Any]] = {}
    for d in deltas:
        p = parts.get(d.index)
        if p is None:
            p = parts[d.index] = [d.id, d.name, []]
        else:
            p[0] = p[0] or d.id
            p[1] = p[1] or d.name
        if d.arguments_fragment:
            p[2].append(d.arguments_fragment)
    return tuple(ToolCall(p[0] or "", p[1] or "", "".join(p[2])) for _, p in sorted(parts.items()))


@attrs.frozen
class Message:
    """One chat message. ``name`` and ``tool_call_id`` follow the OpenAI chat format.

    An assistant message that called tools carries its ``tool_calls`` (``content`` may be
    empty); each answer goes back as a ``tool`` message whose ``tool_call_id`` names the call.
    """

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def __attrs_post_init__(self) -> None:
        # Checked here, not by a converter and validator, so plain messages cost nothing more.
        if self.tool_calls:
            calls = tuple(self.tool_calls)
            for i, c in enumerate(calls):
                if not isinstance(c, ToolCall):
                    raise InvalidRequest(f"expected a ToolCall, got {type(c).__name__}", field=f"tool_calls[{i}]")
            object.__setattr__(self, "tool_calls", calls)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def assistant(cls, content: str = "", tool_calls: Iterable[ToolCall] = ()) -> Message:
        """What a model said, with the tool calls it made (``response.tool_calls``)."""
        return cls("assistant", content, tool_calls=tuple(tool_calls))

    @classmethod
    def tool(cls, content: str, tool_call_id: str) -> Message:
        """The result of the tool call ``tool_call_id``."""
        return cls("tool", content, tool_call_id=tool_call_id)


@attrs.frozen
class AIRequest:
    """A chat request, provider-neutral.

    ``max_tokens`` bounds the output and so the worst-case cost; when None the model's own
    output limit is used. ``budget_key`` names a caller-supplied budget scope (a user, a team).
    ``tools`` are OpenAI-format tool definitions, passed through to providers that take them;
    ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or an OpenAI-format mapping naming
    one function) goes with them. A model's calls come back in ``AIResponse.tool_calls``.
    """

    messages: tuple[Message, ...] = attrs.field(converter=_tuple)
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    tools: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_tuple)
    budget_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    tool_choice: ToolChoice | None = None

    def __attrs_post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("a request needs at least one message", field="messages")
        for i, m in enumerate(self.messages):
            if not isinstance(m, Message):
                raise InvalidRequest(f"expected a Message, got {type(m).__name__}",
                                     field=f"messages[{i}]")
        if self.max_tokens is not None and not (
            isinstance(self.max_tokens, int) and 0 < self.max_tokens <= 10_000_000
        ):
            raise InvalidRequest(f"must be an int in 1..10,000,000, got {self.max_tokens!r}",
                                 field="max_tokens")
        if self.temperature is not None and not (
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature) and 0 <= self.temperature <= 2
        ):
            raise InvalidRequest(f"must be a number in 0..2, got {self.temperature!r}",
                                 field="temperature")
        if self.tool_choice is not None and not (
            isinstance(self.tool_choice, Mapping) or self.tool_choice in _TOOL_CHOICES
        ):
            raise InvalidRequest(f"must be 'auto', 'none', 'required' or a mapping, got {self.tool_choice!r}",
                                 field="tool_choice")

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw: Any) -> AIRequest:
        """A single-turn request; ``kw`` are the other fields (``max_tokens``, ...)."""
        messages = ([Message.system(system)] if system else []) + [Message.user(prompt)]
        return cls(messages=tuple(messages), **kw)

    def text(self) -> str:
        """All message contents joined: what a byte-level upper bound is computed on."""
        return "\n".join(m.content for m in self.messages)


@attrs.frozen
class TokenCount:
    """A token count and whether it is exact (from the model's tokenizer) or an upper bound."""

    tokens: int
    exact: bool
    method: str = ""

    def __str__(self) -> str:
        return f"{self.tokens}" if self.exact else f"<= {self.tokens}"


@attrs.frozen
class Usage:
    """Tokens an attempt used.

    ``input_tokens`` includes ``cached_tokens``; ``output_tokens`` includes
    ``reasoning_tokens`` (the OpenAI convention), so cost never double counts them.
    ``source`` says where the numbers come from: ``reported`` by the provider, ``counted`` by
    the plugin with the model's tokenizer, or ``estimated`` (an upper bound).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "reported"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        order = ("reported", "counted", "estimated")
        worst = max(self.source, other.source, key=order.index)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            worst,
        )


@attrs.frozen
class Price:
    """USD per million tokens. ``cached_input`` defaults to the input price.

    An explicit price of 0 (a local model) is honoured; an unknown price is ``None`` on the
    model card, never a ``Price`` of zeros.
    """

    input: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    output: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    cached_input: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_money
    )

    @classmethod
    def free(cls) -> Price:
        return cls(Decimal(0), Decimal(0))

    def cost(self, usage: Usage) -> Decimal:
        """Cost of ``usage`` in USD, exact (no float rounding)."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        ) / MILLION

    @property
    def per_1k_max(self) -> Decimal:
        """The dearer of input and output, per 1,000 tokens: what ceilings compare against."""
        return max(self.input, self.output) / 1000


@attrs.frozen
class ModelCard:
    """What a model can do and costs. ``id`` is ``"<provider>/<model>"`` and unique.

    ``capabilities`` are task kinds (``chat``, ``completion``, ``vision``, ``embedding``);
    ``features`` are API features (``tools``, ``json_mode``, ``streaming``, ``system_prompt``).
    ``price`` None means unknown. ``quality`` is a prior in [0, 1] (None: no opinion);
    ``latency_ms`` a prior used until latency is observed.
    """

    id: str
    provider: str
    model: str
    provider_type: str = ""
    capabilities: frozenset[str] = attrs.field(default=frozenset({"chat"}), converter=_frozenset)
    features: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    context_window: int = 4096
    max_output_tokens: int | None = None
    price: Price | None = None
    quality: float | None = None
    latency_ms: float | None = None
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.context_window <= 0:
            raise InvalidRequest(f"must be > 0, got {self.context_window}", field="context_window")
        if self.quality is not None and not 0 <= self.quality <= 1:
            raise InvalidRequest(f"must be in [0, 1], got {self.quality}", field="quality")

    @classmethod
    def for_provider(cls, provider: str, model: str, **kw: Any) -> ModelCard:
        return cls(id=f"{provider}/{model}", provider=provider, model=model, **kw)

    @property
    def output_limit(self) -> int:
        return self.max_output_tokens or self.context_window


def _check_ceiling(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Decimal):
        ok = value.is_finite() and value >= 0
    else:
        ok = isinstance(value, int | float) and math.isfinite(value) and value >= 0
    if not ok:
        raise InvalidRequest(f"must be a finite number >= 0, got {value!r}", field=attribute.name)


@attrs.frozen
class ModelRequirements:
    """What a request needs of a model. Every field is a hard filter except ``prefer_tags``.

    ``max_cost_per_1k_tokens`` compares with the dearer of a model's input and output price;
    ``max_request_cost`` is a per-request ceiling on the worst-case cost of one attempt.
    ``providers``/``exclude_providers`` allow and deny provider names; ``models`` pins ids.
    """

    min_capabilities: frozenset[str] = attrs.field(default=frozenset({"chat"}), converter=_frozenset)
    required_features: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    max_latency_ms: float | None = attrs.field(default=None, validator=_check_ceiling)
    max_cost_per_1k_tokens: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    max_request_cost: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    min_context_window: int | None = attrs.field(default=None, validator=_check_ceiling)
    providers: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset)
    )
    exclude_providers: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    models: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset)
    )
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    prefer_tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk of a provider stream carries ``usage``.
    ``tool_calls`` are pieces of tool calls (see :class:`ToolCallDelta`)."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()


@attrs.frozen
class ProviderResponse:
    """What a provider returns for one attempt: text, usage, why generation stopped and the
    tool calls the model made (``finish_reason`` is then usually ``"tool_calls"``)."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    raw_model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


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
