"""The chat route's own constructs: served ahead of Starlette (its errors still OpenAI's JSON),
a block cut by the body's deadline, then one by the answer's (a plain asyncio timer where
nothing inside shields itself, else an anyio cancel scope), and the disconnect watcher (a
bare task on asyncio, a task group elsewhere) that cuts the upstream call."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anyio
import httpx
import pytest
import sniffio
from squirrel_models_gateway import GatewayThread, build

from ..support import secret_scanner
from ..support.faulty_server import FaultyServer
from .conftest import TEAM_KEY, faulty_config, request_head

HI = [{"role": "user", "content": "Hi"}]
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}


def _scope(body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "headers": [(b"authorization", f"Bearer {TEAM_KEY}".encode()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


@pytest.mark.anyio
async def test_a_client_that_disconnects_cancels_its_request(faulty: FaultyServer, canary_env: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The app driven as a server drives it, on asyncio and on trio: the client goes away while
    the upstream holds the answer; the upstream call is cut, the budget settled, nothing is
    sent and nothing stays in flight. On asyncio the answer's block is the core's plain
    timer (the aiohttp engine and the memory budget hold no cancel shield), on trio an anyio
    cancel scope: both are cut the same way."""
    import squirrel_models_gateway.app as gateway_app
    from squirrel_models.deadline import AsyncioDeadline

    blocks: list[type] = []
    original = gateway_app.cut_block

    def cut_block(*args: Any) -> Any:
        block = original(*args)
        blocks.append(type(block))
        return block

    monkeypatch.setattr(gateway_app, "cut_block", cut_block)
    app, _ = build(faulty_config(faulty))
    gw = app.state.gateway
    body = json.dumps({"model": "faulty/hang", "messages": HI, "max_tokens": 8}).encode()
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    gone = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()  # a server's receive() once the body is read: until the client goes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with gw.lifespan():
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, _scope(body), receive, send)
            # Guards against a hang, not speed bounds: each waits for what must come.
            with anyio.fail_after(30):
                while faulty.by_model["hang"] < 1:
                    await anyio.sleep(0.005)
            held = faulty.open_connections
            assert gw.in_flight == 1 and gw.manager.budget_backend.open_reservations == 1
            gone.set()
            with anyio.fail_after(30):
                while gw.in_flight:
                    await anyio.sleep(0.005)
        assert sent == []
        assert gw.manager.budget_backend.open_reservations == 0
        with anyio.fail_after(30):
            while faulty.open_connections >= held:  # the hung upstream call was cut
                await anyio.sleep(0.005)
    native = sniffio.current_async_library() == "asyncio"
    assert len(blocks) == 2 and (blocks == [AsyncioDeadline] * 2 if native
                                 else AsyncioDeadline not in blocks)


def test_a_fault_past_the_handlers_is_a_500_in_openai_json(faulty_gw: GatewayThread,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat route is served ahead of Starlette's error middleware, whose 500 was plain
    text: a fault of the gateway's own is still OpenAI's error JSON, naming no detail."""
    gw = faulty_gw.app.state.gateway

    async def broken(*args: Any) -> int:
        raise RuntimeError("broken")

    monkeypatch.setattr(gw, "_answer", broken)
    r = httpx.post(faulty_gw.base_url + "/chat/completions", headers=AUTH, timeout=30,
                   json={"model": "faulty/ok", "messages": HI, "max_tokens": 4})
    secret_scanner.collect(r.text, *r.headers.values())
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["message"] == "internal error (RuntimeError)"
    assert gw.in_flight == 0


def test_a_body_sent_in_parts_within_the_deadline_is_answered(faulty_gw: GatewayThread) -> None:
    """The body's deadline is the request's scope's until the body is read (no scope of its
    own): parts that keep coming within it are read and answered."""
    body = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 4}).encode()
    with socket.create_connection(("127.0.0.1", faulty_gw.port)) as s:
        s.sendall(request_head(faulty_gw.port, body) + body[:10])
        time.sleep(0.2)
        s.sendall(body[10:])
        s.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["choices"][0]["message"]["content"]
