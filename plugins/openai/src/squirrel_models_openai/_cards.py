"""Model cards: configured and discovered models, completed from the offline catalogues.

Order of precedence for every field: the ``[[providers.models]]`` override (set fields may
add or remove single names: ``features = ["+tools"]``), then what the server's ``GET /models``
said (some servers give a context length), then the catalogues (:mod:`._catalogue`: features,
capabilities, context window, output limit and price of known models, only where the endpoint
is the catalogued provider's), then the defaults of :class:`ModelCard`. A model with no known
price keeps ``price=None``: unknown, never $0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from squirrel_models.providers import MAX_TOKENS, ModelOverride
from squirrel_models.types import ModelCard, Price

from ._tokens import base_name

if TYPE_CHECKING:
    from ._catalogue import Endpoint

__all__ = ["DEFAULT_FEATURES", "TYPE_NAME", "build_cards", "is_chat_model", "parse_models_list",
           "price_far_below"]

log = logging.getLogger("squirrel_models.openai")
#: A configured price this many times below the catalogue's is taken for a unit mistake.
#: Discounts stop far above it (the Batch API halves prices); a price per thousand tokens
#: written where the configuration wants one per million is a thousand times too low.
FAR_BELOW = 10

TYPE_NAME = "openai"
#: Features every chat model of an OpenAI-compatible API has, catalogued or not.
DEFAULT_FEATURES = frozenset({"streaming", "system_prompt"})
#: Discovered names that are plainly not chat models (GET /models lists everything a key can
#: reach: embeddings, speech, images, moderation, legacy completion models).
_NOT_CHAT = re.compile(
    r"embed|whisper|tts|dall-e|gpt-image|moderation|transcribe|davinci|babbage|^ada|"
    r"search|similarity|realtime|audio|computer-use|sora", re.I)
#: Fields some servers put on a /models entry to give the served context length.
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length")


def is_chat_model(name: str) -> bool:
    return not _NOT_CHAT.search(base_name(name))


def parse_models_list(payload: Any) -> list[tuple[str, int | None]]:
    """(model id, served context length if the entry says) of each entry of a /models body."""
    from squirrel_models.errors import MalformedResponse

    data = payload.get("data") if isinstance(payload, Mapping) else None
    if data is None and isinstance(payload, Mapping):
        data = payload.get("models")  # some servers
    if not isinstance(data, list):
        raise MalformedResponse("GET /models: no 'data' list in the body")
    out: list[tuple[str, int | None]] = []
    for entry in data:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str) or not entry["id"].strip():
            continue
        # A window beyond MAX_TOKENS is not believed (the card keeps its default instead).
        ctx = next((entry[f] for f in _CONTEXT_FIELDS
                    if isinstance(entry.get(f), int) and not isinstance(entry.get(f), bool)
                    and 0 < entry[f] <= MAX_TOKENS), None)
        out.append((entry["id"], ctx))
    return out


def _card(provider: str, model: str, context: int | None, endpoint: Endpoint | None) -> ModelCard:
    from ._catalogue import describe  # loaded at start-up, not with the plugin

    entry = describe(model, endpoint) if endpoint is not None else None
    if entry is None:
        kw: dict[str, Any] = {"context_window": context} if context else {}
        return ModelCard.for_provider(provider, model, provider_type=TYPE_NAME, features=DEFAULT_FEATURES, **kw)
    context = context or entry.context_window
    output = entry.max_output_tokens
    if output is not None and context is not None:
        output = min(output, context)  # a server that serves a smaller window than catalogued
    kw = {"context_window": context} if context else {}
    return ModelCard.for_provider(provider, model, provider_type=TYPE_NAME, features=entry.features,
                                  capabilities=entry.capabilities, max_output_tokens=output,
                                  price=entry.price, metadata=entry.metadata, **kw)


def build_cards(provider: str, overrides: Sequence[ModelOverride],
                discovered: Iterable[tuple[str, int | None]] = (),
                endpoint: Endpoint | None = None) -> list[ModelCard]:
    """Cards for every discovered chat model and every configured one, overrides applied.
    ``endpoint`` (from :func:`._catalogue.resolve`) says whose catalogue entries apply; None:
    none (unpriced, default features).

    Slow the first time (the catalogues load): call it off the event loop.
    """
    by_name = {o.name: o for o in overrides}
    contexts: dict[str, int | None] = {}
    for name, ctx in discovered:
        if name in by_name or is_chat_model(name):
            contexts.setdefault(name, ctx)
    for o in overrides:
        contexts.setdefault(o.name, None)
    cards = []
    for name, ctx in contexts.items():
        card = _card(provider, name, ctx, endpoint)
        override = by_name.get(name)
        if (override is not None and override.price is not None and card.price is not None
                and (warning := price_far_below(override.price, card.price)) is not None):
            log.warning("%s: %s", card.id, warning)
        cards.append(override.apply(card) if override is not None else card)
    return cards


def price_far_below(configured: Price, listed: Price) -> str | None:
    """Why ``configured`` (a ``[[providers.models]]`` price) looks like a unit mistake, being
    at least :data:`FAR_BELOW` times below the catalogue's ``listed`` price; None if it does
    not. Such a price passes the core's check (gpt-4o per thousand tokens, 0.0025, is above
    any per-token price), and budgets would then reserve a thousandth of what is billed."""
    low = [f"{name} ${mine:f} is {_times(theirs / mine)}x below ${theirs:f}"
           for name in ("input", "output")
           if (mine := getattr(configured, name)) is not None and (theirs := getattr(listed, name))
           and mine > 0 and theirs / mine >= FAR_BELOW]
    if not low:
        return None
    return (f"the configured price is far below the catalogue's ({'; '.join(low)}, USD per million "
            "tokens): prices are per million tokens, not per thousand; budgets reserve and charge "
            "by the configured price")


def _times(ratio: Decimal) -> str:
    return f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
