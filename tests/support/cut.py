"""A caller that leaves once something has happened, not after a fixed time: a test of what
a request left mid-call is charged must cut it while the call is under way, and a fixed
0.05 s, on a loaded machine, can pass while the request is still reserving (charged nothing,
no ledger row), or before it reached the upstream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

__all__ = ["cut_when"]


async def cut_when(happened: Callable[[], bool], call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call`` and cancel it, as its caller leaving would, once ``happened()`` is true
    (polled every 2 ms). Whether the cancellation ended it (False: it ended first)."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while not happened():
                    await anyio.sleep(0.002)
                scope.cancel()

            tg.start_soon(watch)
            await call()
            tg.cancel_scope.cancel()
    return scope.cancelled_caught
