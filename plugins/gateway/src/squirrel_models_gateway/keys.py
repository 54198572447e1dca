"""Virtual keys: a bearer token checked against the configured hashes in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from .config import VirtualKey
from .errors import GatewayError

__all__ = ["KeyRing"]

_INVALID = "Incorrect API key provided (unknown or revoked). Ask the gateway's operator for a key."


class KeyRing:
    """The configured keys by their SHA-256 digests. :meth:`authenticate` hashes the presented
    token and compares it with every digest (no early exit: the time taken does not depend on
    which key, if any, matched or how much of it did); an unknown or revoked key is a 401.
    The token itself is never stored, logged or echoed."""

    def __init__(self, keys: Iterable[VirtualKey], *, allow_anonymous: bool) -> None:
        self._keys = [(bytes.fromhex(k.sha256 or ""), k) for k in keys]
        self.allow_anonymous = allow_anonymous

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} key(s), allow_anonymous={self.allow_anonymous})"

    def authenticate(self, authorization: bytes | None) -> VirtualKey | None:
        """The key the ``Authorization`` header carries; None for an anonymous request when
        ``allow_anonymous``; else :class:`GatewayError` 401.

        A gateway open to anyone that has no keys at all serves every request anonymously,
        whatever token it carries: OpenAI's SDKs always send one (the Python SDK refuses to
        start without it), and there is no configured key it could be a mistyped copy of.
        With keys configured, a token that is none of them stays a 401, so a client with a
        mistyped key is told instead of being charged to the anonymous budget."""
        if self.allow_anonymous and not self._keys:
            return None
        if not authorization:
            if self.allow_anonymous:
                return None
            raise GatewayError(401, "You didn't provide an API key: send it as "
                               "'Authorization: Bearer <key>'.", code="missing_api_key")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise GatewayError(401, "The Authorization header must be 'Bearer <key>'.",
                               code="invalid_api_key")
        digest = hashlib.sha256(token).digest()
        found: VirtualKey | None = None
        for known, key in self._keys:
            if hmac.compare_digest(known, digest):
                found = key
        if found is None or found.revoked:
            raise GatewayError(401, _INVALID, code="invalid_api_key")
        return found
