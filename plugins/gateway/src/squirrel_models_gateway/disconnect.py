"""Watching for a client that disconnects while its request is answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

__all__ = ["DisconnectWatch"]


class DisconnectWatch:
    """Cancels a request's scope when its client disconnects (``disconnected`` then says so).
    Once the body is read, the server's ``receive()`` returns only when the client has gone
    (or the answer is complete, which the request sees first: it stops the watch before its
    next await), so one waiting call is the whole watch."""

    __slots__ = ("disconnected", "scope")

    def __init__(self) -> None:
        self.disconnected = False
        self.scope: anyio.CancelScope | None = None

    async def run(self, receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                assert self.scope is not None
                self.scope.cancel()
                return
