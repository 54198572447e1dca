"""Watching for a client that disconnects while its request is answered, and the blocks a
request's deadline and that watch cut."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from squirrel_models.deadline import AsyncioDeadline

__all__ = ["DISCONNECT_HOOK", "DisconnectWatch", "cut_block", "was_cut"]

#: The scope key under which the gateway's protocol (protocol.py) offers each request to hear
#: at once that its client has gone: present (None) in every request's scope; the app stores
#: a callable there while it answers, and the protocol calls it when the connection is lost
#: before the answer is complete. Without it (another server), a task waiting in
#: ``receive()`` watches instead (:meth:`DisconnectWatch.run`): a task made, run and
#: cancelled for every request.
DISCONNECT_HOOK = "squirrel.on_disconnect"


class DisconnectWatch:
    """Cancels a request's scope when its client disconnects (``disconnected`` then says so).
    Once the body is read, the server's ``receive()`` returns only when the client has gone
    (or the answer is complete, which the request sees first: it stops the watch before its
    next await), so one waiting call is the whole watch."""

    __slots__ = ("disconnected", "scope")

    def __init__(self) -> None:
        self.disconnected = False
        # what cut() cancels: the request's anyio cancel scope, or the core's plain asyncio
        # deadline (squirrel_models.deadline.AsyncioDeadline) where nothing inside shields
        self.scope: anyio.CancelScope | AsyncioDeadline | None = None

    def cut(self) -> None:
        """The client has gone: cancel the request's scope (the gateway's protocol calls this
        when the connection is lost; :meth:`run` when ``receive()`` says so)."""
        self.disconnected = True
        assert self.scope is not None
        self.scope.cancel()

    async def run(self, receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cut()
                return


def cut_block(end: float, loop: asyncio.AbstractEventLoop | None, native: bool
              ) -> anyio.CancelScope | AsyncioDeadline:
    """A block of a request cut at ``end`` (the loop's clock) or by its ``cancel()`` (the
    watch). ``native``: nothing inside shields itself or reads the deadline (the route's own
    code, and a plain answer from a manager whose own deadline is a plain timer), so under
    asyncio the core's plain timer that cancels the task does: an anyio cancel scope cost
    about 67,000 instructions a request, a sixth of the route's path outside the manager.
    Else (a stream, a manager that shields its settlement, trio) an anyio cancel scope, so a
    cut respects the shields inside."""
    if native and loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return AsyncioDeadline(loop, task, end)
    return anyio.CancelScope(deadline=end)


def was_cut(block: anyio.CancelScope | AsyncioDeadline) -> bool:
    """Whether ``block`` (:func:`cut_block`) was cut, by its deadline or ``cancel()``."""
    return block.expired if type(block) is AsyncioDeadline else block.cancelled_caught
