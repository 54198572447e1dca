"""The tests' throwaway Redis server (redisserver.py) starts even when the port it picked is
taken before it binds it, as another process on a busy machine can do."""

from __future__ import annotations

import socket

import pytest

from .redisserver import RedisServer


def test_a_port_taken_before_the_first_start_is_left_for_another(redis_binary: str) -> None:
    """Before: redis-server exited with 'bind: Address already in use' and start() raised
    RuntimeError, failing every test of the fixture."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RedisServer(redis_binary, port=port)
        try:
            server.start()
            assert server.port != port and server._ping()
            server.kill()  # a restart keeps its port, so its URL
            server.start()
            assert server._ping()
        finally:
            server.remove()


def test_a_restart_keeps_its_port_or_fails(redis_binary: str) -> None:
    server = RedisServer(redis_binary)
    try:
        server.start()
        port = server.port
        server.kill()
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", port))
            taken.listen()
            with pytest.raises(RuntimeError, match="Address already in use"):
                server.start()
        assert server.port == port
    finally:
        server.remove()
