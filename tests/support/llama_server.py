"""The real llama.cpp OpenAI-compatible server (``llama-cpp-python[server]``) for tests.

In a ``conftest.py``::

    from tests.support.llama_server import llama_server_fixture
    from tests.support.models import smollm2_path

    llama_server = llama_server_fixture(smollm2_path, alias="smollm2", api_key="sk-test")

    def test_x(llama_server):  # a LlamaServer: base_url, alias, api_key, port
        ...

The server starts once per test session (about 1 s, 230 MB), with one thread (it holds its
speed on a busy 2-core machine where two threads collapse), and is stopped at the end.
Known behaviour (FACTS.md): streams never carry usage, even with
``stream_options.include_usage``; a malformed body gets 500; a wrong key gets 401;
temperature 0 is not reproducible across requests, so never assert exact text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from .ports import free_port

#: The line uvicorn (under ``llama_cpp.server``) logs once it listens, with the port it bound.
_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+) ")

__all__ = ["LlamaServer", "free_port", "llama_server_fixture", "start_llama_server"]


@attrs.define
class LlamaServer:
    """A running server. ``base_url`` ends in ``/v1``; ``log`` is its output file."""

    process: subprocess.Popen[bytes]
    port: int
    alias: str
    api_key: str | None
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def output(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _ready(server: LlamaServer) -> bool:
    req = urllib.request.Request(server.base_url + "/models")
    if server.api_key:
        req.add_header("Authorization", f"Bearer {server.api_key}")
    try:
        with urllib.request.urlopen(req, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_llama_server(model: Path, *, alias: str = "smollm2", api_key: str | None = None,
                       n_ctx: int = 2048, threads: int = 1, startup_timeout: float = 120.0,
                       extra_args: tuple[str, ...] = ()) -> LlamaServer:
    """Start ``python -m llama_cpp.server`` on a free port and wait until it answers.

    The server binds port 0 (the kernel picks a free one as it binds) and the port is read
    from the line uvicorn logs once it listens. A port picked beforehand (``free_port()``)
    stayed free only until the server bound it, its imports and the model's load done,
    seconds later on a busy machine: another process could take it meanwhile, and the
    readiness probe could then have been answered by that other server."""
    fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", "0", "--n_threads", str(threads),
           "--n_ctx", str(n_ctx), *extra_args]
    if api_key:
        cmd += ["--api_key", api_key]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env)
    server = LlamaServer(process, 0, alias, api_key, Path(log_name))
    deadline = time.monotonic() + startup_timeout
    while not server.port or not _ready(server):
        if not server.port and (m := _LISTENING.search(server.log.read_bytes())):
            server.port = int(m[1])
            continue
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"llama.cpp server did not start (exit {process.returncode}):\n"
                               f"{server.output()}")
        time.sleep(0.1)
    return server


def llama_server_fixture(model: Callable[[], Path], **kw: Any) -> Any:
    """A session-scoped pytest fixture yielding a :class:`LlamaServer` for ``model()``
    (a callable, so the model is fetched only when a test needs the server); ``kw`` go to
    :func:`start_llama_server`. Skips the tests when ``llama_cpp`` is not installed."""

    @pytest.fixture(scope="session")
    def fixture() -> Iterator[LlamaServer]:
        if importlib.util.find_spec("llama_cpp") is None:  # not imported here: it is heavy
            pytest.skip("llama-cpp-python[server] is not installed")
        server = start_llama_server(model(), **kw)
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()
            with contextlib.suppress(OSError):
                server.log.unlink()

    return fixture
