"""A real ``squirrel serve`` process against clients that try to exhaust it: request heads
too large or too many header lines (431), connections that never send a byte or dribble
their headers (slowloris: dropped after ``header_timeout``), hundreds of idle connections,
a 100 MB body, deeply nested JSON, 10,000 messages. Each ends in OpenAI's error JSON or an
answer, and the process keeps serving the others; all it prints at ``-vv`` with its access
log on goes through the secret scanner."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import secret_scanner
from ..support.faulty_server import FaultyServer
from ..support.serve import Served, squirrel_serve
from .conftest import TEAM_KEY, UPSTREAM_ENV, UPSTREAM_KEY

HI = [{"role": "user", "content": "Hi"}]
BODY = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 4}).encode()
HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def served(faulty_session: FaultyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("exhaustion")
    (folder / "squirrel.toml").write_text(f"""
timeout = 5.0
[fallback]
max_attempts = 1
[[providers]]
name = "faulty"
type = "openai"
discover = false
options = {{ base_url = "{faulty_session.base_url}", api_key_env = "{UPSTREAM_ENV}" }}
models = [{{ name = "ok", context_window = 1000000, max_output_tokens = 64, price = {{ input = "0", output = "0" }} }}]
[gateway]
port = 0
header_timeout = {HEADER_TIMEOUT}
access_log = true
keys = [{{ name = "team", key_env = "SQUIRREL_TEST_EXHAUST_KEY" }}]
""")
    env = {**os.environ, UPSTREAM_ENV: UPSTREAM_KEY, "SQUIRREL_TEST_EXHAUST_KEY": TEAM_KEY}
    with squirrel_serve(Path(folder / "squirrel.toml"), env, "-vv") as s:
        yield s
    assert s.proc.returncode == 0, s.out[-2000:]
    secret_scanner.collect(s.out)
    assert "POST /v1/chat/completions" in s.out  # the access log did print
    assert not secret_scanner.leaky([s.out])
    assert "refused with 431" in s.out and "refused with 408" in s.out  # said why


def _port(s: Served) -> int:
    return int(s.base.rsplit(":", 1)[1])


def head(extra: bytes = b"", length: int = len(BODY)) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + TEAM_KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(length).encode() + b"\r\n" + extra + b"\r\n")


def exchange(s: Served, data: bytes, *, timeout: float = 30) -> bytes:
    """Send ``data`` (ignoring a reset once the server has answered) and read until the
    server closes or ``timeout`` passes."""
    out = b""
    with socket.create_connection(("127.0.0.1", _port(s)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused mid-send: the answer may already be there
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def still_serves(s: Served) -> None:
    r = httpx.post(s.base + "/v1/chat/completions", content=BODY, timeout=30,
                   headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def error_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    status = int(answer.split(b" ", 2)[1])
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return status, body["error"]


@pytest.mark.parametrize("extra", [b"X-Big: " + TEAM_KEY.encode() + b"a" * 1_000_000 + b"\r\n",
                                   b"".join(b"X-H%d: v\r\n" % i for i in range(1000)),
                                   b"A: b\r\n" * 300],
                         ids=["1MB-header", "1000-headers", "300-short-headers"])
def test_a_head_too_large_is_a_431(served: Served, extra: bytes) -> None:
    """A 1 MB header and 1,000 headers were taken whole and served with a 200: any head fit
    in memory."""
    status, error = error_of(exchange(served, head(extra) + BODY))
    assert (status, error["code"]) == (431, "request_header_fields_too_large")
    still_serves(served)


def test_a_header_that_never_ends_is_refused_as_it_grows(served: Served) -> None:
    """httptools holds a header's value until the next header starts: one that never ends
    grew without bound while its connection stayed open."""
    with socket.create_connection(("127.0.0.1", _port(served)), timeout=30) as sock:
        sock.sendall(head()[:-2] + b"X-Endless: ")
        answer = b""
        try:
            for _ in range(200):  # 200 x 8 KB, well past the limit
                sock.sendall(b"a" * 8192)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    status, error = error_of(answer)
    assert (status, error["code"]) == (431, "request_header_fields_too_large")
    still_serves(served)


def test_silent_and_dribbling_connections_are_dropped(served: Served) -> None:
    """Connections that never send a byte, and one that sends a header line every 0.2 s
    (slowloris), were held for ever: uvicorn's keep-alive timer runs only between requests
    and each byte reset it. Now each is dropped ``header_timeout`` after it opened (the
    dribbler with a 408), and the gateway serves others meanwhile."""
    port = _port(served)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(100)]
    still_serves(served)
    dribbler = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        dribbler.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        answer = b""
        end = time.monotonic() + 60  # a bound on the test, far above HEADER_TIMEOUT
        while time.monotonic() < end:
            try:
                dribbler.sendall(b"X-Slow: x\r\n")
            except OSError:
                break
            dribbler.settimeout(0.2)
            try:
                chunk = dribbler.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        status, error = error_of(answer)
        assert (status, error["code"]) == (408, "request_timeout")
        for sock in silent:  # each closed by the server: EOF, not a timeout
            sock.settimeout(30)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in [*silent, dribbler]:
            sock.close()
    still_serves(served)


def test_bodies_that_would_exhaust_it_end_in_a_4xx_or_an_answer(served: Served) -> None:
    status, error = error_of(exchange(served, head(length=100_000_000) + b"x" * 65536))
    assert (status, error["code"]) == (413, "request_too_large")
    nested = (b'{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"x":'
              + b"[" * 100_000 + b"]" * 100_000 + b"}")
    status, error = error_of(exchange(served, head(length=len(nested)) + nested))
    assert (status, error["code"]) == (400, "invalid_json")
    many = json.dumps({"model": "faulty/ok", "messages": HI * 10_000, "max_tokens": 4}).encode()
    answer = exchange(served, head(length=len(many)).replace(b"Host:", b"Connection: close\r\nHost:") + many)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    still_serves(served)
