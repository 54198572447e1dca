"""Builders shared by the core tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from squirrel_models import ModelCard, Price
from squirrel_models.testing import ScriptedProvider

from ..support.cut import cut_when


def card(name: str, provider: str = "p", *, price: tuple[str, str] | None = ("1", "2"),
         **kw: Any) -> ModelCard:
    kw.setdefault("features", {"streaming", "system_prompt"})
    return ModelCard.for_provider(
        provider, name, provider_type="scripted",
        price=None if price is None else Price(Decimal(price[0]), Decimal(price[1])), **kw)


def provider(name: str = "p", *cards: ModelCard) -> ScriptedProvider:
    return ScriptedProvider(name, list(cards))



async def cut_once_called(p: ScriptedProvider, model: str, call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call`` and cancel it once ``p`` has been called for ``model`` (the attempt is
    under way, its reservation made): see ``tests/support/cut.py``."""
    return await cut_when(lambda: p.calls[model] > 0, call)
