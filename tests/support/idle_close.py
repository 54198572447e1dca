"""An OpenAI-compatible server on 127.0.0.1 whose keep-alive is short, as gunicorn's (2 s) or
any server's may be: it closes an idle connection, for real, on its socket.

- ``idle_s``: a connection idle that long is closed cleanly (a FIN), as gunicorn and uvicorn
  close theirs; a request that comes later finds it closed.
- ``on_arrival``: a connection that served a request is closed the moment the next request's
  first bytes arrive, without reading them (the kernel answers them with a reset): the close
  of an idle connection that meets a request on its way, every time, where a timed one meets
  it only when the timing falls so.

Every other request is answered at once with a chat completion carrying usage. Counters:
``connections`` (accepted), ``requests`` (read whole and answered), ``closed_on_arrival``
(requests met by the close: never read). It runs its own event loop in a thread, sharing
nothing with the client under test (asyncio or trio)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
from collections.abc import Iterator

__all__ = ["ShortKeepAlive", "short_keepalive"]


def _answer(model: str) -> bytes:
    body = json.dumps({
        "id": "c1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


class ShortKeepAlive:
    """The server (see the module docstring); ``base_url`` ends in ``/v1``."""

    def __init__(self, *, idle_s: float | None = None, on_arrival: bool = False) -> None:
        self.idle_s, self.on_arrival = idle_s, on_arrival
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.closed_on_arrival = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ShortKeepAlive:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(ready)),
                                        name="short-keepalive", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("short keep-alive server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self, ready: threading.Event) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopping.wait()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                if served and self.on_arrival:
                    # Wait for the next request's first bytes without reading them, then close:
                    # closed with unread data, the socket answers them with a reset.
                    if await self._arrival(writer):
                        self.closed_on_arrival += 1
                    return
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_s)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return  # idle too long (or the client left): closed, a FIN
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                model = json.loads(body).get("model", "ok") if body else "ok"
                self.requests += 1
                served += 1
                writer.write(_answer(model))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _arrival(writer: asyncio.StreamWriter) -> bool:
        """Wait until bytes are waiting on the connection's socket, leaving them unread: True,
        or the client closed it: False."""
        writer.transport.pause_reading()  # the stream reads the socket no more
        sock = writer.get_extra_info("socket")
        while not select.select([sock], [], [], 0)[0]:
            await asyncio.sleep(0.002)
        try:  # a copy of the socket (asyncio's wrapper has no recv) peeks at what came
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
                return bool(peek.recv(1, socket.MSG_PEEK))
        except OSError:
            return False


@contextlib.contextmanager
def short_keepalive(*, idle_s: float | None = None, on_arrival: bool = False) -> Iterator[ShortKeepAlive]:
    """A started :class:`ShortKeepAlive`, stopped on exit."""
    with ShortKeepAlive(idle_s=idle_s, on_arrival=on_arrival) as server:
        yield server
