"""Large prompts do not hold the gateway's event loop: a real ``squirrel serve`` counting
several 4 MB prompts (tiktoken, exact) still answers small requests from another client
first (five of them, one after the other). Before, each 4 MB prompt was counted twice on the
event loop (for the ranking and for the attempt's estimate), about 0.5 s each, and every
other client of the gateway waited; now a prompt whose upper bound reaches
``OFF_LOOP_TOKENS`` is counted once, in a worker thread. An ordering, not a timing
threshold."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import httpx
from squirrel_models.tokens import OFF_LOOP_TOKENS

from ..support.faulty_server import FaultyServer
from ..support.serve import squirrel_serve
from .conftest import UPSTREAM_ENV, UPSTREAM_KEY

MODEL = "gpt-4o-mini"  # tiktoken counts it exactly: the real work of a large prompt
BIG = 4 * 2**20
SMALL = 5  # small requests answered, one after the other, before any large one
WORDS = "lorem ipsum dolor sit amet, consectetur adipiscing elit 12345 "


def _config(tmp_path: Path, upstream: str) -> Path:
    config = tmp_path / "squirrel.toml"
    # A window the prompt's upper bound overflows: the ranking and the estimate count it.
    config.write_text(f"""timeout = 60.0
[[providers]]
name = "up"
type = "openai"
discover = false
[providers.options]
base_url = "{upstream}"
api_key_env = "{UPSTREAM_ENV}"
[[providers.models]]
name = "{MODEL}"
context_window = 2000000
max_output_tokens = 16
price = {{ input = "0", output = "0" }}
[gateway]
port = 0
allow_anonymous = true
max_body_bytes = 20000000
""")
    return config


def _post(port: int, body: bytes) -> socket.socket:
    """A chat request whose body is handed to the kernel whole (sendall returns once the
    gateway has read all but a socket buffer of it); the answer is left to read."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def _status(sock: socket.socket) -> int:
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_small_requests_are_answered_while_large_prompts_are_counted(tmp_path: Path) -> None:
    prompt = (WORDS * (BIG // len(WORDS) + 1))[:BIG]
    assert len(prompt.encode()) >= OFF_LOOP_TOKENS  # its upper bound is past the threshold
    big = json.dumps({"model": f"up/{MODEL}", "max_tokens": 8,
                      "messages": [{"role": "user", "content": prompt}]}).encode()
    small = {"model": f"up/{MODEL}", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with FaultyServer((MODEL,)) as upstream:
        env = {**os.environ, UPSTREAM_ENV: UPSTREAM_KEY}
        with squirrel_serve(_config(tmp_path, upstream.base_url), env) as served, \
                httpx.Client(base_url=served.base, timeout=120) as client:
            assert client.post("/v1/chat/completions", json=small).status_code == 200  # warm
            done: list[tuple[str, int]] = []
            lock = threading.Lock()

            def answer(name: str, sock: socket.socket) -> None:
                status = _status(sock)
                with lock:
                    done.append((name, status))

            socks = [_post(served.port, big) for _ in range(3)]  # all three read by the gateway
            threads = [threading.Thread(target=answer, args=(f"big {i}", s)) for i, s in enumerate(socks)]
            for t in threads:
                t.start()
            for _ in range(SMALL):  # one after the other, each needing the loop a few times
                status = client.post("/v1/chat/completions", json=small).status_code
                with lock:
                    done.append(("small", status))
            for t in threads:
                t.join(120)
    assert [name for name, _ in done[:SMALL]] == ["small"] * SMALL, done
    assert all(status == 200 for _, status in done), done
