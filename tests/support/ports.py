"""Ports on 127.0.0.1 for the tests: a free one for a server to bind (:func:`free_port`), one
where nothing listens, kept so (:func:`closed_port`), one held for a server that must be
told its port and binds it itself (:func:`held_port`), and one where a connection is never
made, nor refused (:func:`connect_hangs`)."""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

__all__ = ["closed_port", "connect_hangs", "free_port", "held_port"]

#: The sockets holding the ports :func:`closed_port` gave, bound for the rest of the process.
_HELD: list[socket.socket] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Only for servers that cannot bind port 0 themselves and say which port they took (a
    port picked here can be taken by another process before the server binds it): give a
    server port 0, or a socket bound here, where it can take one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1, held for the block for a server that cannot bind port 0 (it
    must be given a number) and binds with ``SO_REUSEADDR`` (Python's ``http.server`` and
    ``socketserver``, asyncio, uvicorn): a socket bound with ``SO_REUSEADDR`` that never
    listens keeps it, so the server can bind and listen there, while another socket binding
    without that option, a port picked by :func:`free_port`, and the kernel's choice of a
    local port for an outgoing connection cannot take it, before the server binds or after
    it closed. One binding port 0 with ``SO_REUSEADDR`` may still be given it (Linux shares
    a port between such sockets until one listens): a test retries on another when its
    server finds the port taken."""
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])
    finally:
        holder.close()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where every connection is refused, for as long as the test
    process runs: a socket holds it bound and never listens, so no other process can start
    listening there (a released :func:`free_port` could be taken by another test's server on
    a busy machine, and a test expecting a refused connection then reached that server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return int(s.getsockname()[1])


@contextlib.contextmanager
def connect_hangs() -> Iterator[int]:
    """A port on 127.0.0.1 where a connection is neither made nor refused until the block
    ends: a listening socket whose accept queue is full (``listen(0)``, filled with
    connections never accepted), so the kernel drops every new SYN and a client's connect
    waits, retrying, for as long as its own timeout allows."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):  # the queue holds one or a few, by kernel
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
            if not select.select([], [filler], [], 0.5)[1]:
                break  # this one's SYN was dropped: the queue is full
        else:
            raise RuntimeError("the accept queue never filled")
        yield int(address[1])
    finally:
        for s in (*fillers, listener):
            s.close()
