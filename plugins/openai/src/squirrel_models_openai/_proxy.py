"""The proxy the environment names for a provider's ``base_url``, read once, for both engines.

httpx and aiohttp each read the standard variables their own way, and neither does here: an
httpx client given its own transport ignores them, and aiohttp's ``trust_env=True`` would also
read ``~/.netrc`` on every request (in a worker thread) and add its credentials as an
``Authorization`` header, next to the API key, or in place of it for keys sent as ``api-key``.
So the proxy is chosen once per provider by the core's one reader of the rules
(:func:`squirrel_models.proxies.environment_proxy`: ``HTTPS_PROXY``/``HTTP_PROXY``/
``ALL_PROXY``, ``NO_PROXY`` with names, addresses, CIDR ranges and ports) and given to either
engine explicitly: the same configuration goes through the same proxy under asyncio and trio.
Only ``http://`` proxies are supported (an ``https://`` target goes through them with
``CONNECT``); another scheme is a :class:`~squirrel_models.errors.ConfigError` naming the
variable. A password in the proxy's URL is registered as a secret, so no error, log or repr
shows it.
"""

from __future__ import annotations

from squirrel_models.proxies import check_ca_environment, environment_proxy
from squirrel_models.upstream import endpoint

__all__ = ["check_ca_environment", "environment_proxy", "proxy_endpoint"]


def proxy_endpoint(base_url: str, proxy: str | None) -> str | None:
    """``host:port`` of ``base_url``, and of the proxy when there is one, for errors about
    connections (never the proxy's credentials)."""
    where = endpoint(base_url)
    return f"{where} through the proxy {endpoint(proxy)}" if proxy and where else where
