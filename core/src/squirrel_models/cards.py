"""Models: prices, model cards (what a model can do and costs) and the requirements a request
puts on them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from .errors import InvalidRequest, shown
from .fieldchecks import (
    _check_names,
    _check_required_names,
    _decimal_or_none,
    _frozenset,
    _number_in,
    number_problem,
)
from .money import MONEY
from .responses import Usage

__all__ = ["MAX_CEILING", "MAX_PRICE", "MILLION", "ModelCard", "ModelRequirements", "Price", "PriceTier"]

MILLION = Decimal(1_000_000)
#: The dearest price a model may have, in USD per million tokens (a dollar a token): above
#: it a worst case no longer fits the budget stores' 64-bit nano-dollar counts.
MAX_PRICE = MILLION
#: The largest ceiling a requirement takes (leave it unset for none): a bigger one is a typo.
MAX_CEILING = 10**15


def _check_money(instance: Any, attribute: attrs.Attribute[Any], value: Decimal | None) -> None:
    if value is None:
        return
    if isinstance(value, str):
        raise InvalidRequest(f"{shown(value)} {number_problem(value, signed=True)}", field=attribute.name)
    if not isinstance(value, Decimal):
        raise InvalidRequest(f"expected an amount, got {value!r}"[:200], field=attribute.name)
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"must be a finite amount >= 0, got {value}", field=attribute.name)
    if value > MAX_PRICE:
        raise InvalidRequest(f"must be at most {MAX_PRICE:,} USD per million tokens, got {value:.6g}",
                             field=attribute.name)


def _check_above(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise InvalidRequest(f"must be a whole number of prompt tokens > 0, got {shown(value)}",
                             field=attribute.name)


@attrs.frozen
class PriceTier:
    """The prices of a request whose prompt (cached tokens included) has more than ``above``
    tokens: all of its tokens, not only those above it (the "cliff" providers bill by: gpt-5.4
    above 272,000 prompt tokens, Gemini and Claude above 200,000). USD per million tokens;
    ``cached_input`` defaults to this tier's ``input``."""

    above: int = attrs.field(validator=_check_above)
    input: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    output: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    cached_input: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_money
    )


def _tiers(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_tiers(instance: Price, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(t, PriceTier) for t in value):
        raise InvalidRequest(f"expected a list of price tiers, got {shown(value)}", field="tiers")
    below: Price | PriceTier = instance
    for k, tier in enumerate(value):
        # Dearer with every tier: a worst case priced on a prompt's upper bound then stays
        # at least the cost of the prompt it bounds (what a reservation must be).
        if isinstance(below, PriceTier) and tier.above <= below.above:
            raise InvalidRequest(f"above {tier.above} follows a tier above {below.above}: list "
                                 "the tiers from the smallest prompt up", field=f"tiers[{k}].above")
        for name in ("input", "output", "cached_input"):
            mine, theirs = _rate(tier, name), _rate(below, name)
            if mine < theirs:
                raise InvalidRequest(f"{mine} is cheaper than the {theirs} below this tier: a tier "
                                     "prices a larger prompt, never for less",
                                     field=f"tiers[{k}].{name}")
        below = tier


def _rate(price: Price | PriceTier, name: str) -> Decimal:
    if name == "cached_input" and price.cached_input is None:
        return price.input
    value: Decimal = getattr(price, name)
    return value


@attrs.frozen
class Price:
    """USD per million tokens. ``cached_input`` defaults to the input price. ``tiers``: dearer
    prices for larger prompts (:class:`PriceTier`, smallest prompt first); the prices above are
    those of a prompt at or below the first tier's ``above``.

    An explicit price of 0 (a local model) is honoured; an unknown price is ``None`` on the
    model card, never a ``Price`` of zeros.
    """

    input: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    output: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    cached_input: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_money
    )
    tiers: tuple[PriceTier, ...] = attrs.field(default=(), converter=_tiers, validator=_check_tiers)

    @classmethod
    def free(cls) -> Price:
        return cls(Decimal(0), Decimal(0))

    def cost(self, usage: Usage) -> Decimal:
        """Cost of ``usage`` in USD, exact (no float rounding)."""
        return self.cost_of(usage.input_tokens, usage.output_tokens, usage.cached_tokens)

    def cost_of(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
        """:meth:`cost` of a usage of these counts, the same value, without building one (the
        worst case of every budgeted attempt is priced). Every token at the prices of the
        tier its prompt (``input_tokens``) falls in."""
        rates: Price | PriceTier = self
        if self.tiers:
            for tier in self.tiers:
                if input_tokens > tier.above:
                    rates = tier
        cached = min(cached_tokens, input_tokens)
        cached_rate = rates.input if rates.cached_input is None else rates.cached_input
        m = MONEY  # never the caller's decimal context (see .money)
        return m.divide(m.add(m.add(m.multiply(input_tokens - cached, rates.input),
                                    m.multiply(cached, cached_rate)),
                              m.multiply(output_tokens, rates.output)), MILLION)

    @property
    def dearest(self) -> Price | PriceTier:
        """The prices of the largest prompts: the last tier's, else these."""
        return self.tiers[-1] if self.tiers else self

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
    capabilities: frozenset[str] = attrs.field(
        default=frozenset({"chat"}), converter=_frozenset, validator=_check_names)
    features: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    context_window: int = 4096
    max_output_tokens: int | None = None
    price: Price | None = None
    quality: float | None = None
    latency_ms: float | None = None
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if type(self.context_window) is not int or self.context_window <= 0:
            raise InvalidRequest(f"must be an int > 0, got {shown(self.context_window)}", field="context_window")
        if self.quality is not None and not _number_in(self.quality, 0, 1):
            raise InvalidRequest(f"must be in [0, 1], got {shown(self.quality)}", field="quality")

    @classmethod
    def for_provider(cls, provider: str, model: str, **kw: Any) -> ModelCard:
        return cls(id=f"{provider}/{model}", provider=provider, model=model, **kw)

    @property
    def output_limit(self) -> int:
        return self.max_output_tokens or self.context_window


def _check_ceiling(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        raise InvalidRequest(f"{shown(value)} {number_problem(value, signed=True)}", field=attribute.name)
    if isinstance(value, Decimal):
        ok = value.is_finite() and value >= 0
    else:
        ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
              and value >= 0)
    if not ok:
        raise InvalidRequest(f"must be a finite number >= 0, got {value!r}"[:200], field=attribute.name)
    if value > MAX_CEILING:
        raise InvalidRequest(f"must be at most {MAX_CEILING:.0e} (leave it unset for no ceiling), got "
                             f"{value:.6g}", field=attribute.name)


@attrs.frozen
class ModelRequirements:
    """What a request needs of a model. Every field is a hard filter except ``prefer_tags``.

    ``max_cost_per_1k_tokens`` compares with the dearer of a model's input and output price;
    ``max_request_cost`` is a per-request ceiling on the worst-case cost of one attempt.
    ``providers``/``exclude_providers`` allow and deny provider names; ``models`` pins ids.
    ``allowed_models`` is a permission where ``models`` is a choice: the ids a request may ever
    reach, ``[fallback.graph]`` edges included (which may leave the ``models`` pin); ``models``
    is narrowed to it (a gateway key's ``models`` is one).
    """

    min_capabilities: frozenset[str] = attrs.field(
        default=frozenset({"chat"}), converter=_frozenset, validator=_check_required_names)
    required_features: frozenset[str] = attrs.field(
        default=frozenset(), converter=_frozenset, validator=_check_required_names)
    max_latency_ms: float | None = attrs.field(default=None, validator=_check_ceiling)
    max_cost_per_1k_tokens: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    max_request_cost: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    min_context_window: int | None = attrs.field(default=None, validator=_check_ceiling)
    providers: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset), validator=_check_required_names
    )
    exclude_providers: frozenset[str] = attrs.field(
        default=frozenset(), converter=_frozenset, validator=_check_required_names)
    models: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset), validator=_check_required_names
    )
    tags: frozenset[str] = attrs.field(
        default=frozenset(), converter=_frozenset, validator=_check_required_names)
    prefer_tags: frozenset[str] = attrs.field(
        default=frozenset(), converter=_frozenset, validator=_check_required_names)
    allowed_models: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset), validator=_check_required_names
    )

    def __attrs_post_init__(self) -> None:
        # Filters that leave nothing by themselves failed every request later as "no model
        # meets the requirements", whatever was configured: said here, naming the field.
        if self.providers is not None:
            left = self.providers - self.exclude_providers
            if not self.providers:
                raise InvalidRequest("an empty list allows no provider at all: leave providers "
                                     "unset to allow every one", field="providers")
            if not left:
                raise InvalidRequest(f"excludes every provider that providers allows "
                                     f"({', '.join(sorted(self.providers))[:200]}): no model could "
                                     "be chosen", field="exclude_providers")
        if self.models is not None and self.allowed_models is None:
            pinned = {m.partition("/")[0] for m in self.models if "/" in m}
            if not self.models:
                raise InvalidRequest("an empty list allows no model at all: leave models unset "
                                     "to allow every one", field="models")
            if len(pinned) == len(self.models) and all(
                    p in self.exclude_providers or (self.providers is not None and p not in self.providers)
                    for p in pinned):
                raise InvalidRequest("every model it names is on a provider that providers or "
                                     "exclude_providers leaves out: no model could be chosen",
                                     field="models")
        allowed = self.allowed_models
        if allowed is not None and (self.models is None or not self.models <= allowed):
            object.__setattr__(self, "models", allowed if self.models is None
                               else self.models & allowed)
