"""Model cards: configured and discovered models, completed with genai-prices' data.

Order of precedence for every field: the ``[[providers.models]]`` override, then what the
server's ``GET /models`` said (some servers give a context length), then genai-prices (prices
and context windows of known models), then the defaults of :class:`ModelCard`. A model with no
known price keeps ``price=None``: unknown, never $0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from squirrel_models.providers import ModelOverride
from squirrel_models.types import ModelCard, Price

from ._prices import lookup_model
from ._tokens import base_name

__all__ = ["DEFAULT_FEATURES", "TYPE_NAME", "build_cards", "is_chat_model", "parse_models_list"]

TYPE_NAME = "openai"
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
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            continue
        ctx = next((entry[f] for f in _CONTEXT_FIELDS
                    if isinstance(entry.get(f), int) and not isinstance(entry.get(f), bool)
                    and entry[f] > 0), None)
        out.append((entry["id"], ctx))
    return out


def _card(provider: str, model: str, context: int | None, prices_from: str | None) -> ModelCard:
    info = lookup_model(base_name(model), prices_from) if prices_from else None
    price = None
    metadata: dict[str, Any] = {}
    if info is not None:
        if info.input_per_mtok is not None and info.output_per_mtok is not None:
            price = Price(info.input_per_mtok, info.output_per_mtok, info.cache_read_per_mtok)
        metadata = {"genai_prices_id": info.model_id, "price_tiered": info.tiered}
        context = context or info.context_window
    kw: dict[str, Any] = {"context_window": context} if context else {}
    return ModelCard.for_provider(provider, model, provider_type=TYPE_NAME,
                                  features=DEFAULT_FEATURES, price=price, metadata=metadata, **kw)


def build_cards(provider: str, overrides: Sequence[ModelOverride],
                discovered: Iterable[tuple[str, int | None]] = (),
                prices_from: str | None = "openai") -> list[ModelCard]:
    """Cards for every discovered chat model and every configured one, overrides applied.

    Slow the first time (genai-prices builds its data): call it off the event loop.
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
        card = _card(provider, name, ctx, prices_from)
        override = by_name.get(name)
        cards.append(override.apply(card) if override is not None else card)
    return cards
