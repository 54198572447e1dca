"""The provider contract: what a provider plugin implements.

A plugin returns :class:`ProviderType` objects from the ``register_providers`` hook. The core
instantiates one provider per ``[[providers]]`` entry in the configuration by calling the
type's ``factory`` with a :class:`ProviderSpec`. A provider lists its models as
:class:`~squirrel_models.types.ModelCard` objects and executes requests.

Contract (the conformance suite in :mod:`squirrel_models.testing` checks it):

- ``complete`` and ``stream`` raise only :class:`~squirrel_models.errors.ModelError`
  subclasses for upstream failures, mapped at one boundary, with ``raise ... from exc``.
- They make exactly one upstream attempt: retries belong to the core's fallback chain.
- ``stream`` is an async iterator of :class:`~squirrel_models.types.StreamChunk`; the last
  chunk carries the attempt's :class:`~squirrel_models.types.Usage`. Closing the iterator
  early (``aclose``) stops the upstream work. A failure after the first chunk is raised as
  :class:`~squirrel_models.errors.MidStreamError` carrying the usage received so far.
- What a cut attempt used, where the provider knows it (a local model counts what it read
  and generated): a cancellation that cut ``complete`` or a stream before its first chunk
  carries it as its ``usage`` attribute; a stream cut or closed after its first chunk has it
  as its iterator's ``usage`` attribute once closed (:class:`CountedStream` carries it). The
  core charges that (usage
  ``counted``) rather than its own count of the text received or ``[budget]
  charge_unanswered``'s assumption. A call cancelled before its request left (waiting for a
  connection, or a local model's turn) says so with
  :func:`squirrel_models.unanswered.mark_unsent`: it costs nothing.
- ``aclose`` releases everything the provider opened (connections, models, threads).
- Secrets live in :class:`~squirrel_models.secrets.Secret` and never reach messages or reprs.
- A request field the provider cannot honour (``top_p``, ``seed``, ``stop``, ``n``,
  ``response_format``, images, tools...) is refused, never dropped:
  :func:`squirrel_models.simple.refuse_unsupported` raises the
  :class:`~squirrel_models.errors.InvalidRequestError` (``model_specific``) that makes the
  fallback chain try the next candidate.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import attrs

from .cards import MILLION
from .fieldchecks import _number_in
from .types import AIRequest, ModelCard, Price, PriceTier, ProviderResponse, StreamChunk, Usage

__all__ = ["CountedStream", "ModelOverride", "Provider", "ProviderSpec", "ProviderType"]

#: The largest context window or output limit configuration may declare (a billion tokens).
MAX_TOKENS = 10**9


class CountedStream:
    """A stream's chunks (``chunks``, set by the provider), and, once its generation has
    ended, what the model read and generated (``usage``, set by the provider): what the core
    charges a stream cut or closed after its first chunk (see above), not its own count of
    the text it received. For providers that count locally (llama-local, local transformers)."""

    __slots__ = ("chunks", "usage")

    def __init__(self) -> None:
        self.chunks: AsyncGenerator[StreamChunk, None] | None = None
        self.usage: Usage | None = None

    def __aiter__(self) -> CountedStream:
        return self

    def __anext__(self) -> Awaitable[StreamChunk]:
        assert self.chunks is not None
        return self.chunks.__anext__()

    async def aclose(self) -> None:
        assert self.chunks is not None
        await self.chunks.aclose()


@attrs.frozen
class ModelOverride:
    """A ``[[providers.models]]`` entry: declares a model or overrides what was discovered.

    Fields left None keep the discovered (or default) value. ``price`` has ``input``,
    ``output`` and optional ``cached_input`` in USD per million tokens; 0 means free.

    The set fields (``capabilities``, ``features``, ``tags``) either replace the card's set
    (plain names: ``["streaming"]``) or edit it (every entry signed: ``["+tools",
    "-streaming"]`` adds tools and removes streaming, keeping the rest). Mixing the two forms,
    or adding and removing the same name, is a :class:`~squirrel_models.errors.ConfigError`
    naming the field.

    ``enabled = false`` switches the model off: it stays listed (``squirrel models``) but
    every ranking excludes it with the reason :data:`~squirrel_models.selection.DISABLED`.
    """

    name: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] | None = None
    features: frozenset[str] | None = None
    price: Price | None = None
    quality: float | None = None
    latency_ms: float | None = None
    tags: frozenset[str] | None = None
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        from .errors import ConfigError, shown

        if not isinstance(self.enabled, bool):
            raise ConfigError(f"must be true or false, got {shown(self.enabled)}", field="enabled")

        if not isinstance(self.name, str) or not self.name.strip() or not self.name.isprintable():
            # printable: the name ends the model id, which metrics, headers, log and CLI
            # lines carry (a line break split them), as a provider's name begins it
            raise ConfigError(f"must be a non-empty printable model name, got {shown(self.name)}",
                              field="name")
        # Built in Python, an override skips the configuration's type checks: a value of the
        # wrong type is refused here as a ConfigError too, never a TypeError from a comparison.
        for name in ("context_window", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and not (type(value) is int and 0 < value <= MAX_TOKENS):
                raise ConfigError(f"must be an int in 1..{MAX_TOKENS:,}, got {shown(value)}", field=name)
        if self.quality is not None and not _number_in(self.quality, 0, 1):
            raise ConfigError(f"must be in [0, 1], got {shown(self.quality)}", field="quality")
        if self.latency_ms is not None and not _number_in(self.latency_ms, 0, math.inf):
            raise ConfigError(f"must be a finite number >= 0, got {shown(self.latency_ms)}", field="latency_ms")
        for name in SET_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if not (isinstance(value, frozenset | set | list | tuple) and all(isinstance(v, str) for v in value)):
                    raise ConfigError(f"expected a list of strings, got {shown(value)}", field=name)
                _set_edit(frozenset(value), name)  # validates
                if name != "tags":
                    _warn_near_standard(self.name, name, value)
        if self.price is not None:
            if not isinstance(self.price, Price):
                raise ConfigError(f"expected a Price, got {shown(self.price)}", field="price")
            _check_price_unit(self.price)

    def apply(self, card: ModelCard) -> ModelCard:
        """``card`` with every field this override sets replaced (set fields: replaced, or
        edited when every entry is signed)."""
        changes: dict[str, Any] = {}
        for f in attrs.fields(ModelOverride):
            value = getattr(self, f.name)
            if f.name in ("name", "enabled") or value is None:
                continue
            if f.name in SET_FIELDS:
                edit = _set_edit(value, f.name)
                if edit is not None:
                    add, remove = edit
                    value = (getattr(card, f.name) | add) - remove
            changes[f.name] = value
        window = changes.get("context_window")
        if window is not None and "max_output_tokens" not in changes and (card.max_output_tokens or 0) > window:
            changes["max_output_tokens"] = window  # a smaller window also bounds the output
        return attrs.evolve(card, **changes)


#: Below this, a configured price (USD per million tokens) is a price per token written in
#: the wrong unit: no listed model is that cheap (the cheapest in the models.dev catalogue,
#: 2026-05: 0.00236), and per-token prices stop at 0.0006 (o1-pro's output). Accepted, it
#: would make every budget a million times too generous.
MIN_PRICE = Decimal("0.001")


def _warn_near_standard(model: str, field: str, names: Any) -> None:
    """Log a warning for a capability or feature name that is no standard one but is close to
    one (``caht``, ``+tool``): names are free, so it is kept, but the model then lacks what
    was meant, and requests needing it leave the model out without a word at start-up."""
    import difflib
    import logging

    from .selection import STANDARD_CAPABILITIES, STANDARD_FEATURES

    standard = STANDARD_CAPABILITIES if field == "capabilities" else STANDARD_FEATURES
    for written in sorted(names):
        bare = written.lstrip("+-")
        close = difflib.get_close_matches(bare, standard, n=1, cutoff=0.75)
        if bare not in standard and close:
            logging.getLogger("squirrel_models.config").warning(
                "model %r: %s %r is no standard name; did you mean %s? (kept as written: names "
                "are free)", model, "capability" if field == "capabilities" else "feature", written,
                written[:len(written) - len(bare)] + close[0])


def _check_price_unit(price: Price) -> None:
    _check_rates_unit(price, "")
    for k, tier in enumerate(price.tiers):
        _check_rates_unit(tier, f"tiers[{k}].")


def _check_rates_unit(price: Price | PriceTier, where: str) -> None:
    from .errors import ConfigError

    for name in ("input", "output", "cached_input"):
        value = getattr(price, name)
        if value is not None and 0 < value < MIN_PRICE:
            raise ConfigError(
                f"{value} USD per million tokens is cheaper than any real model: prices are per "
                f"million tokens, not per token ({value} per token is "
                f"{(value * MILLION).normalize():f} per million, per thousand tokens "
                f"{(value * 1000).normalize():f}); 0 means free",
                field=f"price.{where}{name}")


#: The override fields holding sets of names, which may be edited with ``+name``/``-name``.
SET_FIELDS = ("capabilities", "features", "tags")


def _set_edit(value: frozenset[str], field: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(added, removed) names when every entry of ``value`` is signed; None for a plain set
    (a full replacement). Raises :class:`ConfigError` for a mix, a bare sign or a name both
    added and removed."""
    from .errors import ConfigError

    signed = {v for v in value if v[:1] in ("+", "-")}
    if not signed:
        return None
    if len(signed) != len(value):
        plain = sorted(value - signed)
        raise ConfigError(
            f"mixes signed entries ({', '.join(sorted(signed))}) with plain names ({', '.join(plain)}): "
            "sign every entry to add (+name) or remove (-name) single names, or sign none to replace "
            "the whole set", field=field)
    add = frozenset(v[1:].strip() for v in signed if v[0] == "+")
    remove = frozenset(v[1:].strip() for v in signed if v[0] == "-")
    if "" in add | remove:
        raise ConfigError("a '+' or '-' must be followed by a name", field=field)
    if add & remove:
        raise ConfigError(f"both adds and removes {', '.join(sorted(add & remove))}", field=field)
    return add, remove


@attrs.frozen
class ProviderSpec:
    """What a provider factory receives: the instance name, its typed options and overrides.
    ``path`` is the entry's place in the configuration (``providers[0]``), for messages that
    name one of its fields (``providers[0].options.api_key_env``); empty when built by hand."""

    name: str
    type: str
    options: Any
    models: tuple[ModelOverride, ...] = ()
    discover: bool = True
    path: str = ""


@runtime_checkable
class Provider(Protocol):
    """One configured provider instance (an API endpoint, a folder of local models...)."""

    name: str

    async def list_models(self) -> Sequence[ModelCard]:
        """The models this instance serves. Called once at start-up."""
        ...

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        """Run one non-streaming attempt."""
        ...

    def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        """Run one streaming attempt; the last chunk carries usage (and, optionally, the
        iterator's ``usage`` attribute what a stream closed early used: see above)."""
        ...

    async def aclose(self) -> None:
        """Release connections, loaded models and threads."""
        ...

    # Optional: ``cancel_safe`` (a bool attribute or property), true when the provider's calls
    # hold no anyio cancel shield and read no anyio deadline: an asyncio cancellation at any
    # of their awaits leaves nothing that a shield would have protected. When every provider
    # (and the budget and rate-limit stores) allows it, the manager cuts a request at its
    # deadline with a plain asyncio timer instead of an anyio cancel scope (several times
    # cheaper; see squirrel_models.deadline). Absent: false.


@attrs.frozen
class ProviderType:
    """A kind of provider a plugin offers, by ``name`` (the ``type`` in configuration).

    ``options_type`` is an attrs class the ``options`` table is structured into (errors name
    the field); None means the options are passed through as a dict.
    """

    name: str
    factory: Callable[[ProviderSpec], Provider]
    options_type: type | None = None
    description: str = ""


def live_stats(provider: Provider, model: ModelCard) -> Mapping[str, float]:
    """A provider's optional live statistics for ``model`` (``queue_depth``, ``tokens_per_s``)."""
    fn = getattr(provider, "live_stats", None)
    return fn(model) if fn is not None else {}
