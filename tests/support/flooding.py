"""A real server on 127.0.0.1 that answers past the core's bound on an answer
(``squirrel_models.answersize``): a body without end, a length it never keeps, a compressed
body that inflates past the bound, an error body without end, an event-stream line without
end. Shared by the answer-size tests of every HTTP provider plugin."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import anyio
import anyio.abc
from squirrel_models.answersize import MAX_ANSWER_BYTES

__all__ = ["KINDS", "answering", "flooding", "head"]

CHUNK = b"a" * 65536


@cache
def bomb() -> bytes:
    """A gzip body that inflates to a little more than the bound (a few hundred kB sent)."""
    return gzip.compress(b'{"x": "' + b"a" * (MAX_ANSWER_BYTES + 1024), compresslevel=9)


def head(status: int, *lines: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status} X", *lines]) + "\r\n\r\n").encode()


async def read_request(conn: anyio.abc.SocketStream) -> None:
    """Reads a whole request: its head and the body its ``Content-Length`` (or chunked framing)
    announces. A server that closes a connection with request bytes still unread makes the
    kernel send a reset instead of an orderly end, and the client's unread answer is lost with
    it: reading only up to the head failed when the body came in a later segment (a loaded
    machine), as ``ConnectionResetError`` in the middle of an answer that was all sent."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await conn.receive()
    top, _, body = data.partition(b"\r\n\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(b":") for line in top.split(b"\r\n")[1:])}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            body += await conn.receive()
        return
    length = int(fields.get(b"content-length", b"0"))
    while len(body) < length:
        body += await conn.receive()


async def finish(conn: anyio.abc.SocketStream) -> None:
    """Ends an answer in order: half-closes, then waits (30 s at most) for the client to read
    all and close its side, so nothing the client has not read yet is cut by a reset."""
    await conn.send_eof()
    with anyio.move_on_after(30):
        while True:
            await conn.receive()


#: kind -> the answer's head and first bytes; endless bytes follow
ANSWERS = {
    "endless": head(200, "Content-Type: application/json", "Connection: close") + b'{"x": "',
    "length": head(200, "Content-Type: application/json", f"Content-Length: {10**12}") + b'{"x": "',
    "error": head(500, "Content-Type: application/json", "Connection: close") + b'{"error": "',
    "event": head(200, "Content-Type: text/event-stream", "Connection: close") + b'data: {"x": "',
}
#: Every kind of answer :func:`flooding` gives ("event" answers a streamed request only).
KINDS = ("endless", "length", "gzip", "error", "event")


@asynccontextmanager
async def flooding(kind: str) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 that answers every request as ``kind`` says; yields its port and
    a list that gets the bytes sent on each connection once it ends."""
    sent: list[int] = []

    async def serve(conn: anyio.abc.SocketStream) -> None:
        total = 0
        async with conn:
            try:
                await read_request(conn)
                if kind == "gzip":
                    body = bomb()
                    await conn.send(head(200, "Content-Type: application/json", "Content-Encoding: gzip",
                                         f"Content-Length: {len(body)}") + body)
                    total = len(body)
                    with anyio.move_on_after(30):
                        while True:  # until the client drops the connection
                            await conn.receive()
                    return
                await conn.send(ANSWERS[kind])
                while total < 4 * MAX_ANSWER_BYTES:  # ends a test that fails, not one that passes
                    await conn.send(CHUNK)
                    total += len(CHUNK)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass
            finally:
                sent.append(total)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), sent
        tg.cancel_scope.cancel()


@asynccontextmanager
async def answering(body: bytes, content_type: str) -> AsyncIterator[int]:
    """A server on 127.0.0.1 that answers every request with ``body`` in chunks of 64 KiB
    (``Transfer-Encoding: chunked``); yields its port."""

    async def serve(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            await read_request(conn)
            await conn.send(head(200, f"Content-Type: {content_type}", "Transfer-Encoding: chunked"))
            for i in range(0, len(body), len(CHUNK)):
                part = body[i:i + len(CHUNK)]
                await conn.send(b"%x\r\n" % len(part) + part + b"\r\n")
            await conn.send(b"0\r\n\r\n")
            try:
                await finish(conn)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()
