"""The proxies the environment names (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, lower or
upper case), with their passwords registered as secrets.

HTTP libraries quote a proxy's URL in their logs and errors (httpx, httpcore, huggingface_hub),
so a provider whose client reads these variables, or that reads them itself, registers the
password of the URL it may meet with the one redaction point (:mod:`.secrets`) when it is made:
no error, log record or repr shows it. A value without a scheme (``user:pw@proxy.corp:3128``)
is an ``http://`` URL, as every client reads it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .secrets import register

__all__ = ["PROXY_VARIABLES", "proxy_url", "register_environment_proxies"]

#: The variables HTTP clients read for a proxy (httpx, urllib, requests, curl, aiohttp), each
#: in lower and upper case.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxy_url(value: str) -> str:
    """``value``, a proxy from the environment, as a URL (``http://`` when it names no scheme),
    its password registered as a secret; one that cannot be parsed is registered whole."""
    url = value if "://" in value else f"http://{value}"
    try:
        secret = bool(urlsplit(url).password)
    except ValueError:  # malformed: a parser's error would quote the rest
        secret = True
    if secret:
        register(url, opaque=False)  # the URL, and the password it holds as written and decoded
    return url


def register_environment_proxies() -> None:
    """Register the password of every proxy URL in the environment (see :data:`PROXY_VARIABLES`),
    for a client that reads the variables itself."""
    for name in PROXY_VARIABLES:
        for variable in (name, name.upper()):
            if value := os.environ.get(variable):
                proxy_url(value)
