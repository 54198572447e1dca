"""Builders shared by the core tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from squirrel_models import ModelCard, Price
from squirrel_models.testing import ScriptedProvider


def card(name: str, provider: str = "p", *, price: tuple[str, str] | None = ("1", "2"),
         **kw: Any) -> ModelCard:
    kw.setdefault("features", {"streaming", "system_prompt"})
    return ModelCard.for_provider(
        provider, name, provider_type="scripted",
        price=None if price is None else Price(Decimal(price[0]), Decimal(price[1])), **kw)


def provider(name: str = "p", *cards: ModelCard) -> ScriptedProvider:
    return ScriptedProvider(name, list(cards))
