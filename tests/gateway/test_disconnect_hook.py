"""The gateway's protocol tells a request at once that its client has gone
(``DISCONNECT_HOOK``): the chat route then needs no task waiting in ``receive()`` per request.
Proved on a real socket, with uvicorn serving a bare ASGI app through the protocol."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn
from squirrel_models_gateway.disconnect import DISCONNECT_HOOK
from squirrel_models_gateway.protocol import bounded_protocol


class _App:
    """Holds ``/hold`` until its client goes; answers anything else at once. Each request
    leaves its callback in the scope the protocol offered."""

    def __init__(self) -> None:
        self.offered: list[bool] = []
        self.gone: dict[str, threading.Event] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.offered.append(DISCONNECT_HOOK in scope and scope[DISCONNECT_HOOK] is None)
        gone = self.gone[scope["path"]] = threading.Event()
        scope[DISCONNECT_HOOK] = gone.set
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/hold":
            with anyio.move_on_after(10):
                while not gone.is_set():
                    await anyio.sleep(0.01)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def served() -> Iterator[tuple[_App, int]]:
    # The socket is bound here (port 0: the kernel's pick) and handed to uvicorn: a port
    # picked first and bound by the server later could be taken by another process meanwhile.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app, port = _App(), sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", http=bounded_protocol(5.0),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield app, port
    server.should_exit = True
    thread.join(10)
    sock.close()


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_a_client_gone_mid_answer_is_told_at_once(served: tuple[_App, int]) -> None:
    app, port = served
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request("/hold"))
        end = time.monotonic() + 10
        while "/hold" not in app.gone and time.monotonic() < end:
            time.sleep(0.005)
        assert "/hold" in app.gone and not app.gone["/hold"].is_set()
    assert app.gone["/hold"].wait(5)  # closed: the protocol called the request's callback
    assert app.offered == [True]


def test_a_client_gone_after_its_answer_is_not_reported(served: tuple[_App, int]) -> None:
    app, port = served
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request("/answer"))
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.2)  # closed after a complete answer: nothing to cut
    assert not app.gone["/answer"].is_set()
    assert app.offered == [True]
