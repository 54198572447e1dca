"""Cleanup after a request's deadline is bounded: closing an upstream's stream that never
finishes closing (a server that does not answer the close, a body that never drains) cannot
hold the request past its deadline plus the cleanup grace. It was held until the cleanup
backstop (CLEANUP_TIMEOUT, 5 s)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import anyio
import attrs
import pytest
from squirrel_models import AIRequest, DeadlineExceeded, ModelCard, Price, StreamChunk
from squirrel_models.budget import CLEANUP_GRACE
from squirrel_models.testing import ScriptedProvider

from ..support.stalls import loop_stalls

pytestmark = pytest.mark.anyio

DEADLINE = 0.5
#: The grace cleanup gets after the deadline, and scheduling on a busy 2-core machine.
BOUND = CLEANUP_GRACE + 0.25


@attrs.define
class SlowToClose(ScriptedProvider):
    """Streams whose close hangs: closed while waiting at a chunk (the caller stopped
    reading), the generator's ``finally`` waits for a close the server never acknowledges."""

    closing: int = 0
    closes_cut: int = 0

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        self.calls[model.model] += 1
        try:
            yield StreamChunk("hello ")
            yield StreamChunk("world", finish_reason="stop")
        finally:
            self.closing += 1
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                self.closes_cut += 1
                raise


@pytest.mark.parametrize("caller", ["outlives-the-deadline", "breaks-early"])
async def test_a_stream_whose_close_hangs_ends_by_the_bound(squirrel_manager: Callable[..., Any],
                                                            caller: str) -> None:
    """The caller's own work in the ``async for`` body outlives the deadline (the request
    ends in DeadlineExceeded), or the caller leaves after the first chunk (the answer so far
    stands): either way the stream is closed while the upstream waits at a chunk, and that
    close may take until the cleanup bound, no longer."""
    card = ModelCard.for_provider("p", "m", provider_type="scripted", features={"streaming"},
                                  price=Price(Decimal("0.1"), Decimal("0.1")))
    p = SlowToClose("p", [card])
    mm = squirrel_manager({"timeout": 5.0, "fallback": {"max_attempts": 1}})
    async with mm, loop_stalls() as stalls:  # time another process had the CPU is forgiven
        mm.register_model(card, p)
        t0 = time.monotonic()
        request = AIRequest.from_prompt("hi", max_tokens=8)
        if caller == "breaks-early":
            async with mm.stream(request, timeout=DEADLINE) as s:
                async for _ in s:
                    break
            assert s.response is not None and s.response.text == "hello "
        else:
            with pytest.raises(DeadlineExceeded):
                async with mm.stream(request, timeout=DEADLINE) as s:
                    async for _ in s:
                        await anyio.sleep(10)  # the caller's own processing
        wall = stalls.elapsed(t0)
    assert wall <= DEADLINE + BOUND, wall
    assert p.closing == 1 and p.closes_cut == 1  # the close began, and was cut at the bound
