"""A test certificate authority (``trustme``) for real TLS on 127.0.0.1: a server context whose
certificate it signed for ``127.0.0.1`` and ``localhost``, and its certificate as a PEM file,
what ``SSL_CERT_FILE`` names for a client to trust it (as a user behind a TLS-inspecting
corporate proxy names the proxy's CA); and fixtures (``tests/conftest.py`` shares them): ``https``, the
fake server over TLS (one per module, fresh counters per test), and ``trusted``, the CA named
by ``SSL_CERT_FILE``."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .faulty_server import FaultyServer

if TYPE_CHECKING:
    import trustme

__all__ = ["ca_file", "https", "https_server", "server_context", "test_ca", "trusted"]


@functools.cache
def test_ca() -> trustme.CA:
    """The CA, made once per process (generating keys is the slow part)."""
    import trustme  # a test dependency of the plugins that test TLS only

    return trustme.CA()


def server_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A server-side context presenting a certificate for 127.0.0.1 signed by ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    (ca or test_ca()).issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def ca_file(folder: Path, ca: trustme.CA | None = None) -> Path:
    """``ca``'s certificate written as ``folder/ca.pem``, for ``SSL_CERT_FILE``."""
    path = folder / "ca.pem"
    (ca or test_ca()).cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def https_server() -> Iterator[FaultyServer]:
    """The faulty server over real TLS, its certificate signed by the test CA."""
    with FaultyServer(("ok",), tls=server_context()) as server:
        yield server


@pytest.fixture
def https(https_server: FaultyServer) -> FaultyServer:
    https_server.reset_counters()
    return https_server


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test CA, trusted the way a user behind a TLS-inspecting proxy trusts its CA."""
    path = ca_file(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return path
