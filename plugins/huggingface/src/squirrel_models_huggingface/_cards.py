"""Model cards: configured models for remote providers; a local model's own config files.

Configuration (``[[providers.models]]``) overrides everything. A price is never guessed: it is
unknown (``None``) unless configured; a local model is not assumed free either, since its cost
(hardware, power) is the operator's call: configure ``price = { input = 0, output = 0 }``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from squirrel_models.providers import ModelOverride
from squirrel_models.types import ModelCard

__all__ = ["REMOTE_FEATURES", "TYPE_NAME", "context_length", "local_card", "read_json", "remote_cards"]

TYPE_NAME = "huggingface"
REMOTE_FEATURES = frozenset({"streaming", "system_prompt"})
#: config.json fields that hold the context length, by model family (first found wins).
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx",
                   "max_sequence_length", "model_max_length")
#: tokenizer_config.json's model_max_length is 1e30 when unset: ignore absurd values.
_SANE_CONTEXT = 10_000_000


def _apply(card: ModelCard, override: ModelOverride | None) -> ModelCard:
    return override.apply(card) if override is not None else card


def remote_cards(provider: str, overrides: Sequence[ModelOverride], default_model: str | None) -> list[ModelCard]:
    """Cards of a remote provider: ``default_model`` (the ``model`` option) and every configured
    model, in that order, overrides applied."""
    by_name = {o.name: o for o in overrides}
    names = ([default_model] if default_model else []) + [o.name for o in overrides]
    cards = []
    for name in dict.fromkeys(names):
        card = ModelCard.for_provider(provider, name, provider_type=TYPE_NAME, features=REMOTE_FEATURES)
        cards.append(_apply(card, by_name.get(name)))
    return cards


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when the file is missing."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def context_length(config: Mapping[str, Any], tokenizer_config: Mapping[str, Any] | None = None) -> int | None:
    """The context length a model's ``config.json`` declares (``max_position_embeddings``...),
    looking into ``text_config`` for multimodal models, then the tokenizer's
    ``model_max_length``; None when nothing sane says."""
    for source in (config, config.get("text_config") or {}, tokenizer_config or {}):
        if not isinstance(source, Mapping):
            continue
        for name in _CONTEXT_FIELDS:
            value = source.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _SANE_CONTEXT:
                return value
    return None


def local_card(provider: str, name: str, folder: Path, override: ModelOverride | None,
               has_chat_template: bool) -> ModelCard:
    """The card of a local model from its own ``config.json`` (context length, architecture,
    model type) and ``tokenizer_config.json``, then the configured override."""
    config = read_json(folder / "config.json")
    tok_config = read_json(folder / "tokenizer_config.json")
    context = context_length(config, tok_config)
    architectures = config.get("architectures") or []
    metadata: dict[str, Any] = {
        "architecture": architectures[0] if architectures and isinstance(architectures[0], str) else None,
        "model_type": config.get("model_type"),
        "path": str(folder),
        "local": True,
    }
    features = {"streaming"} | ({"system_prompt"} if has_chat_template else set())
    kw: dict[str, Any] = {"context_window": context} if context else {}
    card = ModelCard.for_provider(provider, name, provider_type=TYPE_NAME,
                                  capabilities={"chat"} if has_chat_template else {"completion"},
                                  features=features, tags={"local"}, metadata=metadata, **kw)
    return _apply(card, override)
