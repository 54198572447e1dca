"""A closed ModelManager refuses every later use at once with a SquirrelError saying it is
closed, and no provider is called again; closing twice is nothing.

Before: ``complete`` after ``aclose`` went to the closed providers (the scripted one answered
as if open; llama-local's "the provider is closed" was retried, then FallbackExhausted),
``rank`` and ``get_model`` answered, and ``reload`` rebuilt providers on a closed manager."""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest, SquirrelError
from squirrel_models.manager import ModelManager

from .test_sync import CONFIG

pytestmark = pytest.mark.anyio

REQ = AIRequest.from_prompt("hi", max_tokens=10)


async def test_every_use_after_close_is_refused(squirrel_plugins: Any) -> None:
    mm = ModelManager(CONFIG, plugins=squirrel_plugins)
    async with mm:
        await mm.complete(REQ)
    provider = mm.providers["p"]
    calls = dict(provider.calls)
    await mm.aclose()  # twice: nothing

    async def stream() -> None:
        async with mm.stream(REQ) as s:
            async for _ in s:
                pass

    uses: dict[str, Any] = {"complete": lambda: mm.complete(REQ), "stream": stream,
                            "start": mm.start, "reload": lambda: mm.reload(CONFIG)}
    for name, use in uses.items():
        with pytest.raises(SquirrelError, match="ModelManager is closed"):
            await use()
            pytest.fail(f"{name} after close did not raise")
    for sync_use in (mm.rank, mm.get_model):
        with pytest.raises(SquirrelError, match="ModelManager is closed"):
            sync_use()
    assert dict(provider.calls) == calls
