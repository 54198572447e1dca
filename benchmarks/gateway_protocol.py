"""What bounding a request head costs: uvicorn's httptools protocol against the gateway's
(``squirrel_models_gateway.protocol``: a head timer, bytes and lines counted), in one run.

One keep-alive client sends an OpenAI SDK's request head (its 18 headers) and a small body to
a bare ASGI app, 3,000 times sequentially, three rounds per protocol, taking turns; printed:
the best round's CPU of this process per request (client and server share it) for each, and
their ratio. Run it with the gateway's environment:
``.nox/tests-gateway/bin/python benchmarks/gateway_protocol.py``.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from typing import Any

import uvicorn
from squirrel_models_gateway.protocol import bounded_protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The head an OpenAI SDK sends (its headers, a key of the same length), and a small body.
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept-Encoding: gzip, deflate\r\n"
           b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
           b"User-Agent: OpenAI/Python 2.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 2.0\r\n"
           b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
           b"X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-xxxxxxxxxxxxxxxxxxxx\r\n"
           b"X-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\n"
           b"Content-Length: 2\r\n\r\n{}")


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def cpu_per_request(protocol: Any, n: int = 3000) -> float:
    """Microseconds of this process's CPU per request, ``n`` sequential requests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol,
                                           log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    with socket.create_connection(("127.0.0.1", port)) as client:
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            client.sendall(REQUEST)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += client.recv(4096)
        after = resource.getrusage(resource.RUSAGE_SELF)
    server.should_exit = True
    thread.join()
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1e6


def main() -> None:
    plain: list[float] = []
    bounded: list[float] = []
    for _ in range(3):
        plain.append(cpu_per_request(HttpToolsProtocol))
        bounded.append(cpu_per_request(bounded_protocol(10.0)))
    p, b = min(plain), min(bounded)
    print(f"CPU per request, best of 3 rounds of 3000: httptools {p:.1f} us, "
          f"bounded {b:.1f} us, ratio {b / p:.3f}")


if __name__ == "__main__":
    main()
