"""The gateway keeps an idle client connection longer than its clients keep it.

The official openai SDK (httpx) keeps an idle connection 5 s, and uvicorn, under the gateway,
closed one idle 5 s: a request sent about 5 s after the last could go out on a connection the
gateway was closing, and fail as a connection error. A raw client on 127.0.0.1 sends a request,
waits 6 s on the same connection and sends another: it is answered."""

from __future__ import annotations

import socket
import time

from squirrel_models_gateway import GatewayThread

SDK_KEEP_S = 5.0


def _ask(s: socket.socket) -> bytes:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head


def test_an_idle_connection_outlives_the_sdks_keep_alive(faulty_gw: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", faulty_gw.port)) as s:
        s.settimeout(30)
        assert _ask(s).startswith(b"HTTP/1.1 200")
        time.sleep(SDK_KEEP_S + 1.0)
        assert _ask(s).startswith(b"HTTP/1.1 200")  # the same connection, still open
