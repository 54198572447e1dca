"""The test-support ports (tests/support/ports.py): a port the tests expect to refuse
connections stays refusing, whatever other processes on the machine bind meanwhile; a port
held for a server that must be told one is its alone."""

from __future__ import annotations

import errno
import socket

import pytest

from ..support.ports import closed_port, free_port, held_port


def _listen_on(port: int) -> socket.socket:
    """Listen on ``port`` the way the servers of other tests do (asyncio, uvicorn and
    redis set SO_REUSEADDR)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        s.close()
        raise
    return s


def test_a_closed_port_refuses_connections() -> None:
    port = closed_port()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_no_other_server_can_listen_on_a_closed_port() -> None:
    """Before: the tests took ``free_port()`` (bound and released at once) as a port where
    nothing listens; any server binding port 0 could be given it next, and this bind then
    succeeded, so the connection the test expected refused reached that server."""
    port = closed_port()
    with pytest.raises(OSError) as info:
        _listen_on(port).close()
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_a_held_port_is_the_servers_alone() -> None:
    """A port picked by ``free_port()`` and handed to a server is anyone's until the server
    binds it (a plain bind of it succeeds: the race test_telemetry lost); a held one is
    taken by the server told it, and by no plain bind before, while, or after it serves."""
    loose = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", loose))  # taken in between
    with held_port() as port:
        for _ in range(2):  # before the server, and after it closed
            with socket.socket() as other, pytest.raises(OSError) as info:
                other.bind(("127.0.0.1", port))
            assert info.value.errno == errno.EADDRINUSE
            server = _listen_on(port)  # the server told the port binds and listens
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            with socket.socket() as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
            server.close()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
