"""The one boundary where HTTP failures become squirrel-models errors.

Everything the HTTP layer can raise or answer passes through :func:`to_model_error`, called by
the :func:`boundary` context manager around each upstream call. Error answers (a non-2xx status,
or an error object in a 200 body or in a stream) are raised as :class:`UpstreamError` and mapped
by the core's :func:`squirrel_models.upstream.error_from_status` (401/403, context overflow,
content filters, 429 with ``retry_after``, quota, 408, other 4xx, 5xx). The rest is ours:

=====================================================  =========================================
raised                                                 squirrel-models error
=====================================================  =========================================
httpx and aiohttp timeouts                             :class:`ProviderTimeout`
refused, reset, closed connections, broken HTTP,       :class:`ProviderConnectionError`
unreachable or refusing (407) proxies, a ``CONNECT``
refused, an untrusted TLS certificate
a body that is not the protocol                        :class:`MalformedResponse`
=====================================================  =========================================

httpx's and aiohttp's own messages (which name URLs) never become ours; they stay on
``__cause__``, scrubbed of every known secret.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx
from squirrel_models import upstream
from squirrel_models.errors import (
    InvalidRequestError,
    MalformedResponse,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
)
from squirrel_models.proxies import proxy_refused, untrusted_certificate
from squirrel_models.secrets import RedactingFilter
from squirrel_models.upstream import parse_retry_after

__all__ = ["UpstreamError", "boundary", "parse_retry_after", "to_model_error"]

log = logging.getLogger("squirrel_models.openai")
log.addFilter(RedactingFilter())


class UpstreamError(Exception):
    """An upstream answer that is an error: a non-2xx status, or an error object in a 200 body
    or in a stream. Raised inside :func:`boundary`, which turns it into a :class:`ModelError`."""

    def __init__(self, status: int, headers: Mapping[str, str] | None, payload: Any) -> None:
        self.status, self.headers, self.payload = status, headers or {}, payload
        super().__init__(f"upstream answered {status}")


def _caused_by_timeout(exc: BaseException) -> bool:
    """Whether a chain of causes holds a real timeout. httpx-aiohttp reports refused and
    dropped connections as ``ConnectTimeout``; the aiohttp error on ``__cause__`` tells."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    found_other = False
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, TimeoutError):
            return True
        if type(cause).__module__.startswith("aiohttp"):
            found_other = True
        cause = cause.__cause__ or cause.__context__
    return not found_other


def to_model_error(exc: BaseException) -> ModelError | None:
    """The :class:`ModelError` for ``exc``, or None when ``exc`` is not an upstream failure
    (a bug, which should propagate as it is). See the module docstring for the mapping."""
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, UpstreamError):
        if exc.status == 407:  # the proxy's answer to an http:// target, not the provider's
            return proxy_refused(407)
        return upstream.error_from_status(exc.status, exc.headers, exc.payload)
    name = type(exc).__name__
    if (verify := untrusted_certificate(exc)) is not None:
        return verify
    if type(exc).__module__.startswith("aiohttp"):
        return _from_aiohttp(exc, name)
    if isinstance(exc, httpx.ProxyError) and (m := re.match(r"(\d{3}) ", str(exc))):
        return proxy_refused(int(m[1]))  # httpcore's message for a refused CONNECT: "407 ..."
    if isinstance(exc, httpx.TimeoutException):
        if _caused_by_timeout(exc):
            return ProviderTimeout(f"no answer in time ({name})")
        return ProviderConnectionError(f"connection failed ({name})")
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponse(f"not a valid event stream or body ({name})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return InvalidRequestError(f"bad request URL ({name})")
    if isinstance(exc, httpx.TransportError | httpx.StreamError | ConnectionError):
        return ProviderConnectionError(f"connection failed ({name})")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return MalformedResponse(f"body is not valid JSON ({name})")
    return None


def _from_aiohttp(exc: BaseException, name: str) -> ModelError | None:
    """aiohttp's errors (the engine driven directly under asyncio), mapped as httpx's are."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the CONNECT of an https:// target
        return proxy_refused(exc.status)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # connect, pool and read timeouts
        return ProviderTimeout(f"no answer in time ({name})")
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidRequestError(f"bad request URL ({name})")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                  | aiohttp.ClientResponseError):
        # ClientResponseError here is a response aiohttp could not parse (we never call
        # raise_for_status): httpx reports that as a protocol error, a connection failure.
        return ProviderConnectionError(f"connection failed ({name})")
    return None


def boundary(*, provider: str, model_id: str | None, endpoint: str | None = None,
             auth_hint: str | None = None, path_hint: str | None = None) -> upstream.Boundary:
    """Translate whatever the block raises into a :class:`ModelError` (``raise ... from``)
    that names ``model_id`` and ``provider`` (and ``endpoint``, ``host:port``, for connection
    errors and timeouts; ``auth_hint``, where the key comes from, for a 401/403;
    ``path_hint``, which option holds the URL, for a 404 that is not about a model).
    Exceptions that are not upstream failures (cancellation, bugs) pass through untouched."""
    translate = to_model_error
    if path_hint:
        def translate(exc: BaseException) -> ModelError | None:
            return _hinted(to_model_error(exc), exc, path_hint)
    return upstream.boundary(translate, provider=provider, model_id=model_id, log=log,
                             endpoint=endpoint, auth_hint=auth_hint)


#: A 404 about a model (OpenAI's ``model_not_found``, vLLM's "does not exist", Ollama's "not
#: found"), not about the URL.
_MODEL_MISSING = re.compile(r"model_not_found|\bmodel\b.*(?:not found|does not exist)", re.I | re.S)


def _hinted(err: ModelError | None, exc: BaseException, hint: str) -> ModelError | None:
    """``err`` with ``hint`` added when it is a 404 for a path the server does not have: a
    base_url without its /v1, or with an endpoint's path, answered a bare "HTTP 404"."""
    if (isinstance(exc, UpstreamError) and exc.status == 404 and err is not None
            and not _MODEL_MISSING.search(str(err)) and hint not in str(err)):
        err.args = (f"{err}; {hint}", *err.args[1:])
    return err
