"""Watching for a client that disconnects while its request is answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

__all__ = ["DISCONNECT_HOOK", "DisconnectWatch"]

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
        self.scope: anyio.CancelScope | None = None

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
