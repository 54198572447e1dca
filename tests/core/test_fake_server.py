"""The fake OpenAI-style server plugin authors test against: a fixed port, a taken port, and the
command that serves it by hand."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from squirrel_models.testing.fake_server import FakeServer


def test_a_port_can_be_chosen() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeServer(port=port) as server:
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{server.base_url}/models", timeout=10).status_code == 200


def test_a_taken_port_raises_at_start() -> None:
    with FakeServer() as first, pytest.raises(OSError):
        FakeServer(port=first.port).start()


def test_it_serves_by_hand_until_interrupted() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "squirrel_models.testing.fake_server", "ok", "no-usage"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:")
        base_url = line.split()[2]
        models = httpx.get(f"{base_url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["ok", "no-usage"]
        answer = httpx.post(f"{base_url}/chat/completions", timeout=10,
                            json={"model": "ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from "
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
