"""Model prices and context windows from the bundled data of ``genai-prices``.

Works offline: only the price snapshot shipped inside the installed
``genai-prices`` wheel is used (its online ``UpdatePrices`` is never started),
so prices are as of that release.

How ``genai-prices`` data is interpreted here:

* Prices are USD per million tokens (``Decimal``).
* Time-dependent prices (a list of ``ConditionalPrice`` with start dates, e.g.
  ``o3``'s June 2025 cut) are resolved for the moment given (default: now).
* Tiered prices (``TieredPrices``, e.g. ``gpt-5.4`` above 272K prompt tokens):
  the whole request is billed at the tier chosen by its total input tokens
  ("cliff" pricing). :func:`price_usage` applies this; :func:`lookup_model`
  reports the base tier, sets ``ModelPriceInfo.tiered`` and lists the tiers above
  it (``ModelPriceInfo.tiers``, the core's :class:`~squirrel_models.PriceTier`).
* Service tiers / batch (``price_variants``): :func:`price_usage` applies them
  when given ``service_tier`` (OpenAI's response field) or ``batch=True``;
  without them the standard price is used.
* Web search, storage, audio, image prices exist in the data but are ignored
  here (text-token prices only).

Usage semantics follow OpenAI's ``usage`` object, which match genai-prices':
``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens`` and
``completion_tokens`` INCLUDES ``completion_tokens_details.reasoning_tokens``.
So cached tokens are billed at the cache-read rate instead of (not in addition
to) the input rate, and reasoning tokens are part of the output tokens, never
added twice.

``genai-prices`` (pydantic, ~0.1 s import, ~0.2 s to build its data on first
lookup) is imported only inside functions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
from squirrel_models.types import PriceTier

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice

__all__ = ["ModelPriceInfo", "lookup_model", "price_usage"]


@attrs.frozen
class ModelPriceInfo:
    """Prices and limits of one model, per genai-prices' bundled data.

    Attributes:
        model_id: genai-prices' canonical id (``gpt-4o-mini`` for
            ``gpt-4o-mini-2024-07-18``).
        provider_id: provider whose price list matched (``openai``...).
        input_per_mtok: USD per million uncached input tokens (base tier).
        output_per_mtok: USD per million output tokens, reasoning included.
        cache_read_per_mtok: USD per million cached input tokens, ``None`` when
            the data gives no discount (cached tokens then cost ``input_per_mtok``).
        context_window: max tokens per request as given by genai-prices, ``None``
            if unknown (about 60% of OpenAI models have one).
        tiered: True when some price rises above a prompt-size threshold;
            the ``*_per_mtok`` fields are then the lowest tier.
        tiers: the prices above each threshold, smallest first (empty when not
            tiered, or when the input or output price is unknown).
    """

    model_id: str
    provider_id: str
    input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    cache_read_per_mtok: Decimal | None
    context_window: int | None
    tiered: bool = False
    tiers: tuple[PriceTier, ...] = ()


def _find(model: str, provider_id: str | None) -> tuple[str, ModelInfo] | None:
    from genai_prices import data_snapshot

    try:
        provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    return provider.id, info


def _base(price: Any) -> tuple[Decimal | None, bool]:
    """Return (base price, is_tiered) of a ``Decimal | TieredPrices | None``."""
    if price is None or isinstance(price, Decimal):
        return price, False
    return price.base, True


def _above(price: Any, start: int) -> Any:
    """The rate of a ``Decimal | TieredPrices`` for prompts above ``start`` tokens (genai-prices
    applies a tier to prompts of more than its ``start``)."""
    if not hasattr(price, "tiers"):
        return price
    rate = price.base
    for tier in price.tiers:
        if tier.start <= start:
            rate = tier.price
    return rate


def lookup_model(
    model: str, provider_id: str | None = "openai", *, at: datetime | None = None
) -> ModelPriceInfo | None:
    """Look a model up in genai-prices' bundled data.

    Args:
        model: model name as used in API requests; dated names such as
            ``gpt-4o-mini-2024-07-18`` match their family. Case-insensitive.
        provider_id: genai-prices provider id (``"openai"``, ``"azure"``,
            ``"groq"``...); ``None`` lets genai-prices guess from the model name.
        at: moment for time-dependent prices; default now (UTC).

    Returns:
        The prices, or ``None`` if the provider or the model is unknown.
    """
    found = _find(model, provider_id)
    if found is None:
        return None
    pid, info = found
    prices: ModelPrice = info.get_prices(at or datetime.now(tz=UTC))
    input_p, t1 = _base(prices.input_mtok)
    output_p, t2 = _base(prices.output_mtok)
    cache_p, t3 = _base(prices.cache_read_mtok)
    tiers: tuple[PriceTier, ...] = ()
    if (t1 or t2 or t3) and input_p is not None and output_p is not None:
        starts = sorted({t.start for p in (prices.input_mtok, prices.output_mtok, prices.cache_read_mtok)
                         for t in getattr(p, "tiers", None) or ()})
        tiers = tuple(PriceTier(s, _above(prices.input_mtok, s), _above(prices.output_mtok, s),
                                _above(prices.cache_read_mtok, s) if cache_p is not None else None)
                      for s in starts)
    return ModelPriceInfo(
        model_id=info.id,
        provider_id=pid,
        input_per_mtok=input_p,
        output_per_mtok=output_p,
        cache_read_per_mtok=cache_p,
        context_window=info.context_window,
        tiered=t1 or t2 or t3,
        tiers=tiers,
    )


def price_usage(
    model: str,
    provider_id: str | None,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    *,
    service_tier: str | None = None,
    batch: bool = False,
    at: datetime | None = None,
) -> Decimal | None:
    """Return the USD cost of one request, or ``None`` if the model is unknown.

    Args:
        model: model name as used in the request or returned in the response.
        provider_id: genai-prices provider id, ``None`` to guess from the model.
        input_tokens: OpenAI ``usage.prompt_tokens`` (cached tokens INCLUDED).
        output_tokens: OpenAI ``usage.completion_tokens`` (reasoning INCLUDED).
        cached_tokens: ``usage.prompt_tokens_details.cached_tokens``; billed at
            the cache-read rate (the input rate when the model has none).
        reasoning_tokens: ``usage.completion_tokens_details.reasoning_tokens``;
            informational for OpenAI (billed as output tokens, already inside
            ``output_tokens``), passed on so genai-prices can use a separate
            reasoning rate where its data has one.
        service_tier: OpenAI's ``service_tier`` (``"default"``, ``"flex"``,
            ``"priority"``...); selects that tier's prices where the data has
            them, else the standard price applies.
        batch: True for Batch API requests (batch prices where known).
        at: request time for time-dependent prices; default now (UTC).

    Raises:
        ValueError: a count is negative, ``cached_tokens > input_tokens`` or
            ``reasoning_tokens > output_tokens``.
    """
    if min(input_tokens, output_tokens, cached_tokens, reasoning_tokens) < 0:
        raise ValueError("token counts must not be negative")
    if cached_tokens > input_tokens:
        raise ValueError(f"cached_tokens ({cached_tokens}) > input_tokens ({input_tokens}): pass prompt_tokens")
    if reasoning_tokens > output_tokens:
        raise ValueError(
            f"reasoning_tokens ({reasoning_tokens}) > output_tokens ({output_tokens}): pass completion_tokens"
        )
    from genai_prices import Usage, calc_price

    context: dict[str, str] = {}
    if service_tier:
        context["service_tier"] = service_tier
    if batch:
        context["processing"] = "batch"
    usage = Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cached_tokens,
        output_tokens=output_tokens,
        output_reasoning_tokens=reasoning_tokens,
    )
    try:
        calc = calc_price(
            usage,
            model,
            provider_id=provider_id,
            genai_request_timestamp=at or datetime.now(tz=UTC),
            price_context=context or None,
        )
    except LookupError:
        return None
    return calc.total_price
