"""A test certificate authority (``trustme``) for real TLS on 127.0.0.1: a server context whose
certificate it signed for ``127.0.0.1`` and ``localhost``, and its certificate as a PEM file,
what ``SSL_CERT_FILE`` names for a client to trust it (as a user behind a TLS-inspecting
corporate proxy names the proxy's CA)."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import trustme

__all__ = ["ca_file", "server_context", "test_ca"]


@functools.cache
def test_ca() -> trustme.CA:
    """The CA, made once per process (generating keys is the slow part)."""
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
