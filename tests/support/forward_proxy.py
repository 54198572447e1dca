"""A real HTTP forward proxy on 127.0.0.1, for tests of what goes through a proxy.

It runs in a background thread with its own event loop (like the fake server), takes requests
in absolute form (``POST http://host:port/path HTTP/1.1``, what a client sends to an HTTP proxy
for an ``http://`` target), records each one, and forwards it in origin form on a fresh
connection, relaying the answer (``Content-Length`` or chunked) back as it arrives. A
``CONNECT host:port`` (what a client sends for an ``https://`` target) opens a tunnel: the proxy
answers 200 and relays bytes both ways, seeing only TLS. With ``credentials`` set it answers
407 to requests and ``CONNECT``s whose ``Proxy-Authorization`` is not theirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from urllib.parse import urlsplit

__all__ = ["ForwardProxy"]


async def _head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    """The first line and the headers of a message, or None at the end of the stream."""
    line = await reader.readline()
    if not line:
        return None
    headers = []
    while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _encode(first: str, headers: list[tuple[str, str]]) -> bytes:
    return "".join([f"{first}\r\n", *(f"{k}: {v}\r\n" for k, v in headers), "\r\n"]).encode("latin-1")


class ForwardProxy:
    """The proxy, as a context manager. ``url``: ``http://127.0.0.1:PORT``; ``seen``: the
    absolute URLs of the requests it was asked to forward, and the ``host:port`` of each
    ``CONNECT``, in order."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.port = 0
        self.seen: list[str] = []
        self.auth_seen: list[str | None] = []
        self._expected = None if credentials is None else (
            "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ForwardProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready),),
                                        name="forward-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the forward proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()
            # Closed here, so that the handlers end at their reads rather than by cancellation.
            for w in list(self._writers):
                w.close()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while (head := await _head(reader)) is not None:
                first, headers = head
                method, target, version = first.split(" ", 2)
                n = int(_get(headers, "content-length") or 0)
                body = await reader.readexactly(n) if n else b""
                self.seen.append(target)
                self.auth_seen.append(_get(headers, "proxy-authorization"))
                if self._expected is not None and self.auth_seen[-1] != self._expected:
                    writer.write(_encode(f"{version} 407 Proxy Authentication Required",
                                         [("Proxy-Authenticate", 'Basic realm="test"'), ("Content-Length", "0")]))
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    await self._tunnel(target, version, reader, writer)
                    return
                await self._forward(method, target, version, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(self, method: str, target: str, version: str, headers: list[tuple[str, str]],
                       body: bytes, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [(k, v) for k, v in headers if not k.lower().startswith("proxy-")]
            up_writer.write(_encode(f"{method} {path} {version}", kept) + body)
            await up_writer.drain()
            head = await _head(up_reader)
            if head is None:
                raise ConnectionError("the upstream closed without answering")
            writer.write(_encode(*head))
            length = _get(head[1], "content-length")
            if length is not None:
                writer.write(await up_reader.readexactly(int(length)))
            elif (_get(head[1], "transfer-encoding") or "").lower() == "chunked":
                while True:  # relayed chunk by chunk, so a stream arrives as it is sent
                    size_line = await up_reader.readline()
                    size = int(size_line.split(b";")[0], 16)
                    writer.write(size_line + await up_reader.readexactly(size + 2))
                    await writer.drain()
                    if size == 0:
                        break
            await writer.drain()
        finally:
            up_writer.close()

    async def _tunnel(self, target: str, version: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """Relay bytes between the client and ``target`` until either side closes."""
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except (OSError, ValueError):
            writer.write(_encode(f"{version} 502 Bad Gateway", [("Content-Length", "0")]))
            await writer.drain()
            return
        self._writers.add(up_writer)  # closed at stop too, so the relay ends at its reads
        writer.write(_encode(f"{version} 200 Connection Established", []))
        await writer.drain()

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:  # one side done: the tunnel is
                writer.close()
                up_writer.close()

        try:
            await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
