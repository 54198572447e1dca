"""The one boundary where ``huggingface_hub`` (and transformers) failures become squirrel-models errors.

Everything a call can raise passes through :func:`to_model_error`, used by :func:`boundary`:

====================================================  ==========================================
what was raised                                       squirrel-models error
====================================================  ==========================================
``HfHubHTTPError`` 401, 403 (or what huggingface_hub  :class:`AuthenticationError`
raised reading an error answer, by its status)
a context-length error (code or message, any 4xx)     :class:`ContextWindowExceeded`
``content_filter`` codes                              :class:`ContentFiltered`
``HfHubHTTPError`` 429                                :class:`RateLimited` (``retry_after`` from
                                                      ``Retry-After``, ``retry-after-ms``,
                                                      ``x-ratelimit-reset-*`` or ``RateLimit``)
429 ``insufficient_quota``, 402 (out of credits)      :class:`RateLimited`, not retryable
408                                                   :class:`ProviderTimeout`
409 (a conflict, retried like a 5xx)                  :class:`ServerError`
other 4xx                                             :class:`InvalidRequestError`
5xx                                                   :class:`ServerError`
``InferenceTimeoutError``, httpx timeouts             :class:`ProviderTimeout`
connect errors, resets, closed connections,           :class:`ProviderConnectionError`
a proxy refusing a ``CONNECT`` (407...), an untrusted
TLS certificate
TGI's in-stream errors: ``overloaded``,               :class:`ServerError`
``generation``, unknown
TGI ``validation`` (context-length or not)            :class:`ContextWindowExceeded` /
                                                      :class:`InvalidRequestError`
bodies that are not JSON, missing choices, answers    :class:`MalformedResponse`
or chunks of the wrong shape
====================================================  ==========================================

Error answers go through the core's :func:`squirrel_models.upstream.error_from_status`, so
they map exactly as the openai plugin's do. Messages are ours: the status, the upstream error
code and the upstream message passed through :func:`~squirrel_models.secrets.redact` (dropped
for 401/403, where servers echo the key).
huggingface_hub's own messages name URLs and quote bodies; they stay on ``__cause__``, scrubbed
of every known secret first, so a printed traceback cannot leak a token either.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import AbstractContextManager
from typing import Any

from squirrel_models import upstream
from squirrel_models.errors import (
    InvalidRequestError,
    MalformedResponse,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    ServerError,
)
from squirrel_models.proxies import proxy_refused, untrusted_certificate
from squirrel_models.secrets import RedactingFilter, redact
from squirrel_models.upstream import MAX_MESSAGE, describe_error, parse_retry_after, scrub

__all__ = ["boundary", "error_body", "parse_retry_after", "scrub", "to_model_error"]

log = logging.getLogger("squirrel_models.huggingface")
log.addFilter(RedactingFilter())


def _names(exc: BaseException) -> set[str]:
    """Class names along ``exc``'s MRO: httpx and httpx2 (huggingface_hub 2's fork) share them."""
    return {c.__name__ for c in type(exc).__mro__}


def error_body(response: Any) -> Any:
    """The decoded body of an error response (JSON if it parses, else text; None if unread)."""
    try:
        content = response.content
    except Exception:  # a streamed response nobody read: httpx's ResponseNotRead
        return None
    if not isinstance(content, bytes | bytearray | str):
        return None
    return upstream.decode_error_body(content)


def _from_tgi(exc: BaseException) -> ModelError:
    """TGI's typed errors (``{"error": ..., "error_type": ...}`` events and bodies)."""
    name = type(exc).__name__
    message = str(exc.args[0]) if exc.args else ""
    if name == "ValidationError":
        if upstream.is_context_overflow(message):
            return upstream.context_window_exceeded(describe_error(None, "validation", message), message)
        return InvalidRequestError(describe_error(None, "validation", message))
    if name == "IncompleteGenerationError":
        return ProviderConnectionError(describe_error(None, "incomplete_generation", message))
    kind = {"OverloadedError": "overloaded", "GenerationError": "generation"}.get(name, "unknown")
    return ServerError(describe_error(None, kind, message))


def to_model_error(exc: BaseException) -> ModelError | None:
    """The :class:`ModelError` for ``exc``, or None when ``exc`` is not an upstream failure (a
    bug, which propagates as it is). See the module docstring for the mapping."""
    if isinstance(exc, ModelError):
        return exc
    names, name = _names(exc), type(exc).__name__
    response = getattr(exc, "response", None)
    if "HfHubHTTPError" not in names or response is None:
        response = _error_answer_being_raised(exc)
    if response is not None:
        if int(response.status_code) == 407:  # the proxy's answer to an http:// target
            return proxy_refused(407)
        return upstream.error_from_status(int(response.status_code), response.headers, error_body(response))
    if "TextGenerationError" in names:
        return _from_tgi(exc)
    if "InferenceTimeoutError" in names or "TimeoutException" in names:
        return ProviderTimeout(f"no answer in time ({name})")
    if "DecodingError" in names:
        return MalformedResponse(f"not a valid body ({name})")
    if "UnsupportedProtocol" in names or "InvalidURL" in names:
        return InvalidRequestError(f"bad request URL ({name})")
    if (verify := untrusted_certificate(exc)) is not None:
        return verify
    if "ProxyError" in names and (m := re.match(r"(\d{3}) ", str(exc))):
        return proxy_refused(int(m[1]))  # httpcore's message for a refused CONNECT: "407 ..."
    if names & {"TransportError", "StreamError"} or isinstance(exc, ConnectionError):
        return ProviderConnectionError(f"connection failed ({name})")
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(f"no answer in time ({name})")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | RecursionError) or (
            isinstance(exc, ValueError) and _raised_in(exc, "json")):  # too deep, or a 5,000-digit number
        return MalformedResponse(f"body is not valid JSON ({name})")
    if isinstance(exc, ValueError | TypeError | KeyError | AttributeError) and (
            _raised_in(exc, "huggingface_hub.inference._generated.types")
            or _raised_in(exc, "huggingface_hub.inference._common", "_format_chat_completion_stream_output")):
        # huggingface_hub reading an answer of the wrong shape (choices an int, say).
        return MalformedResponse(f"the answer is not what the protocol promises ({name})")
    if isinstance(exc, ValueError | TypeError) and _raised_in(exc, "huggingface_hub"):
        # huggingface_hub refusing a request it cannot build (a non-HF key for the router...).
        return InvalidRequestError(f"the client refused the request ({name}: "
                                   f"{redact(str(exc))[:MAX_MESSAGE]})")
    return None


def _error_answer_being_raised(exc: BaseException) -> Any | None:
    """The error answer huggingface_hub was turning into its ``HfHubHTTPError`` when it failed
    itself: its ``hf_raise_for_status`` reads any JSON body as an object, so a body of
    ``null``, a list, a number or ``{"errors": 5}`` raised AttributeError or TypeError instead
    (a bug escaping, or a 500 taken for a request the client refused). The answer's status
    says what happened; its ``response`` is still in that frame."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if (frame.f_code.co_name == "hf_raise_for_status"
                and str(frame.f_globals.get("__name__", "")).startswith("huggingface_hub")):
            response = frame.f_locals.get("response")
            status = getattr(response, "status_code", None)
            return response if isinstance(status, int) and status >= 400 else None
        tb = tb.tb_next
    return None


def _raised_in(exc: BaseException, package: str, function: str | None = None) -> bool:
    """Whether the innermost frame of ``exc`` runs in ``package`` (and in ``function``)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None or not str(last.tb_frame.f_globals.get("__name__", "")).startswith(package):
        return False
    return function is None or last.tb_frame.f_code.co_name == function


def boundary(*, provider: str, model_id: str | None, endpoint: str | None = None,
             auth_hint: str | None = None) -> AbstractContextManager[None]:
    """Translate what the block raises into a :class:`ModelError` (``raise ... from``) naming
    ``model_id`` and ``provider`` (and ``endpoint``, ``host:port``, for connection errors and
    timeouts; ``auth_hint``, where the token comes from, for a 401/403); the client's
    exception is scrubbed of secrets first. Cancellation and bugs pass through untouched."""
    return upstream.boundary(to_model_error, provider=provider, model_id=model_id, log=log,
                             endpoint=endpoint, auth_hint=auth_hint)
