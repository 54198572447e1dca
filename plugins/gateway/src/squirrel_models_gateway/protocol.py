"""uvicorn's HTTP protocol (httptools) with bounds on what reaches the app: a request head
must arrive within ``header_timeout`` and stay within :data:`MAX_HEAD_BYTES` and
:data:`MAX_HEADERS`.

uvicorn bounds neither: its keep-alive timer runs only between requests and any byte resets
it, so a connection that never sends a byte, or sends its headers a byte every few seconds
(slowloris), was held for ever, and enough of them took every file descriptor; and httptools
takes a head of any size, so one request's headers could fill the memory (a 1 MB header and
10,000 headers were served with a 200). The refusals are OpenAI's error JSON, the connection
closed after them.

It also tells a request at once that its client has gone (:data:`DISCONNECT_HOOK`), which
the app otherwise learns from a task waiting in ``receive()``.

uvicorn documents passing a protocol class as its ``http`` setting, not the class this one
extends (``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``) nor the hooks it
overrides (``data_received``, ``on_message_begin``, ``on_url``, ``on_headers_complete``,
``send_400_response``, ``connection_made``, ``connection_lost``) and the attributes it reads
(``cycle`` and its ``disconnected`` and ``scope``, ``scope``, ``headers``, ``client``,
``transport``, ``loop``): they are the same from uvicorn 0.30 to 0.55, and the gateway's
``pyproject.toml`` pins that range. ``tests/gateway/test_exhaustion.py`` fails if a release
changes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .disconnect import DISCONNECT_HOOK
from .errors import error_body

__all__ = ["DISCONNECT_HOOK", "MAX_HEADERS", "MAX_HEAD_BYTES", "bounded_protocol"]

#: The largest request line plus headers taken (an OpenAI SDK sends about 1 KB; nginx takes
#: 32 KB by default, uvicorn's h11 16 KB).
MAX_HEAD_BYTES = 64 * 1024
#: The most header lines taken (an SDK sends about 15).
MAX_HEADERS = 256

log = logging.getLogger("squirrel_models.gateway")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _refusal(status: int, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error", code)).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)


class _BoundedProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_lines = 0
        self._in_head = False
        self._began_now = False
        self._head_raw = 0
        self._refused: bytes | None = None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is dropped too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:  # gone before the answer was complete
            on_disconnect = cycle.scope.get(DISCONNECT_HOOK)
            if on_disconnect is not None:
                on_disconnect()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head arriving while the request before it is answered: that one
            # is bounded by its own deadline, and is not cut for its successor
            self._arm_head_timer()
            return
        if self._in_head:
            self._log(408, "its headers did not arrive within header_timeout")
            self.transport.write(_refusal(408, f"the request's headers did not arrive within "
                                               f"{self.head_timeout:g} s", "request_timeout"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._began_now = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # httptools holds a header's value until the next one starts, so a head that never
        # ends is counted here, as it arrives (from the read after the one that began it,
        # which may have carried the body of the request before)
        if not self._began_now:
            self._head_raw += len(data)
        if self._head_raw > MAX_HEAD_BYTES:
            self._too_large()
            self.send_400_response("")

    def _log(self, status: int, why: str) -> None:
        client = f"{self.client[0]}:{self.client[1]} " if self.client else ""
        log.warning("%sa request refused with %d: %s", client, status, why)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_lines = self._head_raw = 0
        self._in_head = self._began_now = True
        self._arm_head_timer()  # from its first byte; the keep-alive timer covers the wait before

    def _count(self, size: int, lines: int = 0) -> None:
        self._head_bytes += size
        self._head_lines += lines
        if self._head_bytes > MAX_HEAD_BYTES or self._head_lines > MAX_HEADERS:
            self._too_large()
            # httptools stops parsing and raises a parser error, which uvicorn answers with
            # send_400_response: refused there with the 431
            raise ValueError("request head too large")

    def _too_large(self) -> None:
        self._refused = _refusal(
            431, f"the request's headers are larger than {MAX_HEAD_BYTES} bytes or "
                 f"{MAX_HEADERS} lines", "request_header_fields_too_large")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_headers_complete(self) -> None:
        # counted here, once, rather than in on_header: a call per header cost about 0.4 us
        # each (benchmarks/gateway_protocol.py); what arrives meanwhile is bounded by
        # data_received
        self._count(sum(len(n) + len(v) + 4 for n, v in self.headers), len(self.headers))
        self._in_head = False
        self._disarm_head_timer()
        self.scope[DISCONNECT_HOOK] = None  # type: ignore[literal-required]
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what its parser refuses was plain text ("Invalid HTTP request
        # received."), the one answer of the gateway not in OpenAI's error JSON
        if self._refused is None:
            self._refused = _refusal(400, "the request is not valid HTTP/1.1 (the line or a "
                                          "header could not be parsed)", "invalid_http_request")
        self._disarm_head_timer()
        self._in_head = False
        if not self.transport.is_closing():
            if self._refused.startswith(b"HTTP/1.1 431"):
                # (uvicorn has just logged "Invalid HTTP request received.": this says why)
                self._log(431, f"its head is above {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} lines")
            self.transport.write(self._refused)
            self.transport.close()


def bounded_protocol(head_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol whose requests' heads must arrive within ``head_timeout``
    seconds (from a connection's opening or a request's first byte) and fit in
    :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS`."""
    return type("BoundedHttpToolsProtocol", (_BoundedProtocol,), {"head_timeout": head_timeout})
