"""Builders shared by the core tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import anyio
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


async def cut_once_called(p: ScriptedProvider, model: str, call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call`` and cancel it, as its caller leaving would, once ``p`` has been called for
    ``model`` (the attempt is under way, its reservation made): not after a fixed time, which
    a busy machine can spend before the attempt starts, cutting the reservation instead.
    Whether the cancellation ended it."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while not p.calls[model]:
                    await anyio.sleep(0.002)
                scope.cancel()

            tg.start_soon(watch)
            await call()
            tg.cancel_scope.cancel()
    return scope.cancelled_caught
