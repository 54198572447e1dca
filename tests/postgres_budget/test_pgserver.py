"""The tests' throwaway PostgreSQL server (pgserver.py) starts even when the port it picked is
taken before it binds it, as another process on a busy machine can do."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from .pgserver import PgServer


def _taken(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_port_taken_before_the_first_start_is_left_for_another(pg_bindir: Any) -> None:
    """Before: postgres could not bind ('Address already in use'), pg_ctl failed and start()
    raised CalledProcessError, failing every test of the fixture."""
    server = PgServer.create(pg_bindir)
    try:
        with _taken() as taken:
            port = server.port = taken.getsockname()[1]
            server.start()
            assert server.port != port
        moved = server.port
        server.stop()
        server.start()  # a restart keeps its port, so its URL
        assert server.port == moved
    finally:
        server.remove()


def test_a_restart_keeps_its_port_or_fails(pg_bindir: Any) -> None:
    server = PgServer.create(pg_bindir)
    try:
        server.start()
        port = server.port
        server.stop()
        with _taken(port), pytest.raises(subprocess.CalledProcessError):
            server.start()
        assert server.port == port
    finally:
        server.remove()
