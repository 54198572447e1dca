"""The one boundary where HTTP failures become squirrel-models errors.

Everything the HTTP layer can raise or answer passes through :func:`to_model_error`, called by
the :func:`boundary` context manager around each upstream call:

=====================================================  =========================================
upstream                                               squirrel-models error
=====================================================  =========================================
``code: context_length_exceeded`` (or such a message)  :class:`ContextWindowExceeded`
``code: content_filter`` / ``content_policy_violation`` :class:`ContentFiltered`
429                                                    :class:`RateLimited` (``retry_after`` from
                                                       ``retry-after-ms``, ``Retry-After`` or the
                                                       ``x-ratelimit-reset-*`` headers)
401, 403                                               :class:`AuthenticationError`
400, 404, 409, 413, 422 and other 4xx                  :class:`InvalidRequestError`
408                                                    :class:`ProviderTimeout`
5xx                                                    :class:`ServerError` (``retry_after`` too,
                                                       when a 503 says when to come back)
httpx and aiohttp timeouts                             :class:`ProviderTimeout`
refused, reset, closed connections, broken HTTP        :class:`ProviderConnectionError`
a body that is not the protocol                        :class:`MalformedResponse`
=====================================================  =========================================

Messages are built from the status code, the upstream error ``type``/``code`` and the upstream
message passed through :func:`squirrel_models.secrets.redact` (for 401/403 the upstream message
is dropped: servers echo parts of the key there). httpx's and aiohttp's own messages (which name
URLs) never become ours; they stay on ``__cause__``.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from squirrel_models.errors import (
    AuthenticationError,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from squirrel_models.secrets import RedactingFilter, redact

__all__ = ["UpstreamError", "boundary", "parse_retry_after", "to_model_error"]

log = logging.getLogger("squirrel_models.openai")
log.addFilter(RedactingFilter())

#: Longest upstream message quoted in an error (the rest is cut).
MAX_MESSAGE = 300
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "responsibleaipolicyviolation"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"})
_CONTEXT_TEXT = re.compile(r"context (?:length|window|size)|maximum context|too many tokens", re.I)
_WINDOW = re.compile(r"(?:maximum context length is|context window of|limit of|context size(?: is)?|n_ctx[ =:]+)"
                     r"\s*\(?(\d+)", re.I)
_NEEDED = re.compile(r"(?:requested|resulted in|requested tokens \()\s*(\d+)", re.I)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class UpstreamError(Exception):
    """An upstream answer that is an error: a non-2xx status, or an error object in a 200 body
    or in a stream. Raised inside :func:`boundary`, which turns it into a :class:`ModelError`."""

    def __init__(self, status: int, headers: Mapping[str, str] | None, payload: Any) -> None:
        self.status, self.headers, self.payload = status, headers or {}, payload
        super().__init__(f"upstream answered {status}")


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from (in order) ``retry-after-ms``, ``Retry-After``
    (seconds or an HTTP date) or OpenAI's ``x-ratelimit-reset-requests``/``-tokens``
    (durations such as ``1s``, ``6m0s``, ``20ms``). None when no header says."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is not None:
        try:
            return max(float(ra), 0.0)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra).timestamp()
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(when - (time.time() if now is None else now), 0.0)
    # The reset of a limit that is used up says when a retry can pass; failing that, the later.
    resets: list[tuple[bool, float]] = []
    for kind in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = _duration(value) if value else None
        if seconds is not None:
            resets.append((headers.get(f"x-ratelimit-remaining-{kind}") == "0", seconds))
    if not resets:
        return None
    exhausted = [s for used_up, s in resets if used_up]
    return max(exhausted or [s for _, s in resets])


def _duration(text: str) -> float | None:
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _error_fields(payload: Any) -> tuple[str, str, str, Mapping[str, Any]]:
    """(type, code, message, the error object) of an OpenAI-style error body, leniently:
    ``{"error": {...}}``, ``{"error": "text"}``, FastAPI's ``{"detail": ...}`` or text."""
    err: Any = payload
    if isinstance(payload, Mapping):
        err = payload.get("error", payload.get("detail", payload))
    if isinstance(err, list) and err:  # FastAPI validation errors
        err = err[0]
    if not isinstance(err, Mapping):
        return "", "", "" if err is None else str(err), {}
    inner = err.get("innererror")
    code = err.get("code")
    if isinstance(inner, Mapping) and inner.get("code"):
        code = inner.get("code")
    message = err.get("message", err.get("msg", ""))
    return (str(err.get("type") or ""), str(code or ""), str(message or ""), err)


def _describe(status: int | None, kind: str, message: str, *, quote: bool = True) -> str:
    head = f"HTTP {status}" if status else "upstream error"
    if kind:
        head += f" ({kind})"
    if quote and message:
        message = redact(" ".join(message.split()))
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "..."
        head += f": {message}"
    return head


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _from_upstream(exc: UpstreamError) -> ModelError:
    status, headers = exc.status, exc.headers
    payload = exc.payload
    if isinstance(payload, bytes | bytearray):
        try:
            payload = json.loads(payload)
        except ValueError:
            payload = payload.decode("utf-8", "replace")
    etype, code, message, err = _error_fields(payload)
    kind = code or etype
    low_code, low_type = code.lower(), etype.lower()
    text = _describe(status, kind, message)

    if status in (401, 403):
        return AuthenticationError(_describe(status, kind, message, quote=False), status_code=status)
    if low_code in _FILTER_CODES or low_type in _FILTER_CODES:
        return ContentFiltered(text, status_code=status)
    if (low_code in _CONTEXT_CODES or low_type in _CONTEXT_CODES
            or (400 <= status < 500 and status != 429 and _CONTEXT_TEXT.search(message))):
        window = _int(err.get("n_ctx"))
        needed = _int(err.get("n_prompt_tokens"))
        if window is None and (m := _WINDOW.search(message)):
            window = int(m.group(1))
        if needed is None and (m := _NEEDED.search(message)):
            needed = int(m.group(1))
        return ContextWindowExceeded(text, needed=needed, window=window, status_code=status)
    if status == 429:
        if low_code == "insufficient_quota" or low_type == "insufficient_quota":
            # Out of credit: waiting will not help, so neither will retrying.
            err_q = RateLimited(text, retry_after=None, status_code=status)
            err_q.retryable = False
            return err_q
        return RateLimited(text, retry_after=parse_retry_after(headers), status_code=status)
    if status == 408:
        return ProviderTimeout(text, status_code=status)
    if 400 <= status < 500:
        return InvalidRequestError(text, status_code=status)
    if status >= 500:
        server = ServerError(text, status_code=status)
        retry_after = parse_retry_after(headers) if status in (502, 503, 504) else None
        if retry_after is not None:
            server.retry_after = retry_after  # type: ignore[attr-defined]
        return server
    return MalformedResponse(_describe(status, kind, "unexpected status"), status_code=status)


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
        return _from_upstream(exc)
    name = type(exc).__name__
    if type(exc).__module__.startswith("aiohttp"):
        return _from_aiohttp(exc, name)
    if isinstance(exc, httpx.TimeoutException):
        if _caused_by_timeout(exc):
            return ProviderTimeout(f"no answer in time ({name})")
        return ProviderConnectionError(f"connection failed ({name})")
    if type(exc).__name__ == "SSEError" or isinstance(exc, httpx.DecodingError):
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


@contextlib.contextmanager
def boundary(*, provider: str, model_id: str | None) -> Iterator[None]:
    """Translate whatever the block raises into a :class:`ModelError` (``raise ... from``)
    that names ``model_id`` and ``provider``. Exceptions that are not upstream failures
    (cancellation, bugs) pass through untouched."""
    try:
        yield
    except Exception as exc:
        err = to_model_error(exc)
        if err is None:
            raise
        err.with_context(model_id=model_id or "", provider=provider)
        if err is exc:
            raise
        log.debug("%s %s: %s: %s", provider, model_id, type(err).__name__, err)
        raise err from exc
