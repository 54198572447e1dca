"""The proxy the environment names for a provider's ``base_url``, read once, for both engines.

httpx and aiohttp each read the standard variables their own way, and neither does here: an
httpx client given its own transport ignores them, and aiohttp's ``trust_env=True`` would also
read ``~/.netrc`` on every request (in a worker thread) and add its credentials as an
``Authorization`` header, next to the API key, or in place of it for keys sent as ``api-key``.
So the proxy is chosen here, once per provider, and given to either engine explicitly: the same
configuration goes through the same proxy under asyncio and trio.

The rules are Python's ``urllib.request`` (those of curl, requests and aiohttp):
``https_proxy`` or ``http_proxy`` by the scheme of ``base_url``, else ``all_proxy``; a lower-case
variable wins over its upper-case twin; ``no_proxy`` (a comma-separated list of host names,
``host:port`` or ``*``; a name covers its subdomains, a leading dot is optional) turns the proxy
off for the hosts it covers. A proxy without a scheme is ``http://``
(:func:`squirrel_models.proxies.proxy_url`). Only ``http://`` proxies
are supported (an ``https://`` target goes through them with ``CONNECT``); another scheme is a
:class:`~squirrel_models.errors.ConfigError` naming the variable. A password in the proxy's URL
is registered as a secret, so no error, log or repr shows it.
"""

from __future__ import annotations

import os
import urllib.request
from urllib.parse import urlsplit

from squirrel_models.errors import ConfigError
from squirrel_models.proxies import proxy_url
from squirrel_models.secrets import register
from squirrel_models.upstream import endpoint

__all__ = ["environment_proxy", "proxy_endpoint"]


def _variable(key: str) -> str:
    """The name of the variable ``urllib`` read for ``key`` (``https``, ``all``): lower case first."""
    lower = f"{key}_proxy"
    return lower if os.environ.get(lower) else lower.upper()


def environment_proxy(base_url: str) -> str | None:
    """The URL of the proxy that requests to ``base_url`` go through, or None (see the module
    docstring for the rules)."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    key = parts.scheme if proxies.get(parts.scheme) else "all"
    proxy = proxies.get(key)
    if not proxy:
        return None
    # Checked with the port too, so that a "host:port" entry of no_proxy matches.
    if parts.hostname and urllib.request.proxy_bypass_environment(parts.netloc.rpartition("@")[2], proxies):
        return None
    proxy = proxy_url(proxy)
    try:
        scheme = urlsplit(proxy).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme != "http" or endpoint(proxy) is None:
        register(proxy, opaque=False)
        raise ConfigError(f"must be the URL of an HTTP proxy (http://host:port), the only kind "
                          f"supported; the value is not shown (a {scheme or 'malformed'} URL)",
                          field=f"environment variable {_variable(key)}")
    return proxy


def proxy_endpoint(base_url: str, proxy: str | None) -> str | None:
    """``host:port`` of ``base_url``, and of the proxy when there is one, for errors about
    connections (never the proxy's credentials)."""
    where = endpoint(base_url)
    return f"{where} through the proxy {endpoint(proxy)}" if proxy and where else where
