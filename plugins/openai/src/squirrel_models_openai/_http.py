"""The pooled HTTP client of a provider: httpx's API over aiohttp's engine (asyncio) or over
httpx's own (trio, or when asked). No retries at this level: the core's fallback chain is
the only place that retries, so its bound is the real bound."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from squirrel_models.errors import ConfigError

from .options import OpenAIOptions

__all__ = ["make_client", "uses_aiohttp"]


def uses_aiohttp(transport: str, library: str) -> bool:
    """Whether a client made under ``library`` (sniffio's name) uses the aiohttp engine."""
    if transport == "httpx":
        return False
    if library != "asyncio":
        if transport == "aiohttp":
            raise ConfigError(f"aiohttp runs only under asyncio, not {library}: use auto or httpx",
                              field="transport")
        return False
    if transport == "auto":
        try:
            import httpx_aiohttp  # noqa: F401
        except ImportError:
            return False
    return True


def make_client(options: OpenAIOptions, headers: Mapping[str, str], library: str) -> httpx.AsyncClient:
    """A client for ``options.base_url`` whose pool keeps ``max_connections`` alive."""
    limits = httpx.Limits(max_connections=options.max_connections,
                          max_keepalive_connections=options.max_connections)
    transport: httpx.AsyncBaseTransport
    if uses_aiohttp(options.transport, library):
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits, retries=0)
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    return httpx.AsyncClient(
        transport=transport,
        headers=dict(headers),
        timeout=httpx.Timeout(options.timeout, connect=options.connect_timeout),
        follow_redirects=False,
    )
