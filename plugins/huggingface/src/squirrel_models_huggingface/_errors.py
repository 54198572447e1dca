"""The one boundary where ``huggingface_hub`` (and transformers) failures become squirrel-models errors.

Everything a call can raise passes through :func:`to_model_error`, used by :func:`boundary`:

====================================================  ==========================================
what was raised                                       squirrel-models error
====================================================  ==========================================
``HfHubHTTPError`` 401, 403                           :class:`AuthenticationError`
a context-length error (code or message, any 4xx)     :class:`ContextWindowExceeded`
``content_filter`` codes                              :class:`ContentFiltered`
``HfHubHTTPError`` 429                                :class:`RateLimited` (``retry_after`` from
                                                      ``Retry-After``, ``retry-after-ms``,
                                                      ``x-ratelimit-reset-*`` or ``RateLimit``)
429 ``insufficient_quota``, 402 (out of credits)      :class:`RateLimited`, not retryable
408                                                   :class:`ProviderTimeout`
other 4xx                                             :class:`InvalidRequestError`
5xx                                                   :class:`ServerError`
``InferenceTimeoutError``, httpx timeouts             :class:`ProviderTimeout`
connect errors, resets, closed connections            :class:`ProviderConnectionError`
TGI's in-stream errors: ``overloaded``,               :class:`ServerError`
``generation``, unknown
TGI ``validation`` (context-length or not)            :class:`ContextWindowExceeded` /
                                                      :class:`InvalidRequestError`
bodies that are not JSON, missing choices             :class:`MalformedResponse`
====================================================  ==========================================

Messages are ours: the status, the upstream error code and the upstream message passed through
:func:`~squirrel_models.secrets.redact` (dropped for 401/403, where servers echo the key).
huggingface_hub's own messages name URLs and quote bodies; they stay on ``__cause__``, scrubbed
of every known secret first, so a printed traceback cannot leak a token either.
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

__all__ = ["boundary", "error_body", "parse_retry_after", "scrub", "to_model_error"]

log = logging.getLogger("squirrel_models.huggingface")
log.addFilter(RedactingFilter())

MAX_MESSAGE = 300
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "responsibleaipolicyviolation"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"})
_CONTEXT_TEXT = re.compile(r"context (?:length|window|size)|maximum context|too many tokens|"
                           r"tokens \+ `max_new_tokens` must be <=|input is too long", re.I)
_WINDOW = re.compile(r"(?:maximum context length is|context window of|limit of|context size(?: is)?|n_ctx[ =:]+|"
                     r"must be <=)\s*\(?(\d+)", re.I)
_NEEDED = re.compile(r"(?:requested|resulted in|requested tokens \(|Given:)\s*(\d+)", re.I)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _names(exc: BaseException) -> set[str]:
    """Class names along ``exc``'s MRO: httpx and httpx2 (huggingface_hub 2's fork) share them."""
    return {c.__name__ for c in type(exc).__mro__}


# --- what the upstream said ---------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before retrying: ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP
    date), ``x-ratelimit-reset-requests``/``-tokens`` (``1s``, ``6m0s``) or the IETF
    ``RateLimit`` header the Hub sends (``"api";r=0;t=55``). None when nothing says."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):
            return max(float(ms) / 1000, 0.0)
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
    resets = [s for kind in ("requests", "tokens")
              if (v := headers.get(f"x-ratelimit-reset-{kind}")) and (s := _duration(v)) is not None]
    if resets:
        return max(resets)
    rl = headers.get("ratelimit")
    if rl is not None and (m := re.search(r"\bt=(\d+(?:\.\d+)?)", rl)):
        return float(m.group(1))
    return None


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


def _fields(payload: Any) -> tuple[str, str, str, Mapping[str, Any]]:
    """(type, code, message, error object) of an error body: OpenAI's ``{"error": {...}}``,
    TGI's ``{"error": "text", "error_type": "validation"}``, FastAPI's ``{"detail": ...}``."""
    err: Any = payload
    etype = ""
    if isinstance(payload, Mapping):
        etype = str(payload.get("error_type") or "")
        err = payload.get("error", payload.get("detail", payload))
    if isinstance(err, list) and err:
        err = err[0]
    if not isinstance(err, Mapping):
        return etype, "", "" if err is None else str(err), {}
    code = err.get("code")
    return (str(err.get("type") or etype or ""), str(code or ""), str(err.get("message", err.get("msg", "")) or ""),
            err)


def error_body(response: Any) -> Any:
    """The decoded body of an error response (JSON if it parses, else text; None if unread)."""
    try:
        content = response.content
    except Exception:  # a streamed response nobody read: httpx's ResponseNotRead
        return None
    try:
        return json.loads(content)
    except (ValueError, TypeError):
        return content.decode("utf-8", "replace") if isinstance(content, bytes | bytearray) else None


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


def _context(text: str, message: str, err: Mapping[str, Any], status: int | None) -> ContextWindowExceeded:
    window, needed = _int(err.get("n_ctx")), _int(err.get("n_prompt_tokens"))
    if window is None and (m := _WINDOW.search(message)):
        window = int(m.group(1))
    if needed is None and (m := _NEEDED.search(message)):
        needed = int(m.group(1))
    return ContextWindowExceeded(text, needed=needed, window=window, status_code=status)


def _from_status(status: int, headers: Mapping[str, str], payload: Any) -> ModelError:
    etype, code, message, err = _fields(payload)
    kind = code or etype
    low = {code.lower(), etype.lower()}
    text = _describe(status, kind, message)
    if status in (401, 403):
        return AuthenticationError(_describe(status, kind, message, quote=False), status_code=status)
    if low & _FILTER_CODES:
        return ContentFiltered(text, status_code=status)
    if low & _CONTEXT_CODES or (400 <= status < 500 and status != 429 and _CONTEXT_TEXT.search(message)):
        return _context(text, message, err, status)
    if status == 402 or (status == 429 and "insufficient_quota" in low):
        quota = RateLimited(text, retry_after=None, status_code=status)
        quota.retryable = False  # out of credit: waiting will not help
        return quota
    if status == 429:
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


def _from_tgi(exc: BaseException) -> ModelError:
    """TGI's typed errors (``{"error": ..., "error_type": ...}`` events and bodies)."""
    name = type(exc).__name__
    message = str(exc.args[0]) if exc.args else ""
    if name == "ValidationError":
        if _CONTEXT_TEXT.search(message):
            return _context(_describe(None, "validation", message), message, {}, None)
        return InvalidRequestError(_describe(None, "validation", message))
    if name == "IncompleteGenerationError":
        return ProviderConnectionError(_describe(None, "incomplete_generation", message))
    kind = {"OverloadedError": "overloaded", "GenerationError": "generation"}.get(name, "unknown")
    return ServerError(_describe(None, kind, message))


def to_model_error(exc: BaseException) -> ModelError | None:
    """The :class:`ModelError` for ``exc``, or None when ``exc`` is not an upstream failure (a
    bug, which propagates as it is). See the module docstring for the mapping."""
    if isinstance(exc, ModelError):
        return exc
    names, name = _names(exc), type(exc).__name__
    response = getattr(exc, "response", None)
    if "HfHubHTTPError" in names and response is not None:
        return _from_status(int(response.status_code), response.headers, error_body(response))
    if "TextGenerationError" in names:
        return _from_tgi(exc)
    if "InferenceTimeoutError" in names or "TimeoutException" in names:
        return ProviderTimeout(f"no answer in time ({name})")
    if "DecodingError" in names:
        return MalformedResponse(f"not a valid body ({name})")
    if "UnsupportedProtocol" in names or "InvalidURL" in names:
        return InvalidRequestError(f"bad request URL ({name})")
    if names & {"TransportError", "StreamError"} or isinstance(exc, ConnectionError):
        return ProviderConnectionError(f"connection failed ({name})")
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(f"no answer in time ({name})")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return MalformedResponse(f"body is not valid JSON ({name})")
    if isinstance(exc, ValueError | TypeError) and _raised_in(exc, "huggingface_hub"):
        # huggingface_hub refusing a request it cannot build (a non-HF key for the router...).
        return InvalidRequestError(f"the client refused the request ({name}: "
                                   f"{redact(str(exc))[:MAX_MESSAGE]})")
    return None


def _raised_in(exc: BaseException, package: str) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and str(last.tb_frame.f_globals.get("__name__", "")).startswith(package)


def scrub(exc: BaseException) -> None:
    """Redact every known secret from ``exc`` and its causes, in place (their ``args`` and
    huggingface_hub's ``server_message``), so printing the chain cannot leak one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        with contextlib.suppress(Exception):
            cur.args = tuple(redact(a) if isinstance(a, str) else a for a in cur.args)
        if isinstance(getattr(cur, "server_message", None), str):
            with contextlib.suppress(Exception):
                cur.server_message = redact(cur.server_message)  # type: ignore[attr-defined]
        cur = cur.__cause__ or cur.__context__


@contextlib.contextmanager
def boundary(*, provider: str, model_id: str | None) -> Iterator[None]:
    """Translate what the block raises into a :class:`ModelError` (``raise ... from``) naming
    ``model_id`` and ``provider``. Cancellation and bugs pass through untouched."""
    try:
        yield
    except Exception as exc:
        err = to_model_error(exc)
        if err is None:
            raise
        err.with_context(model_id=model_id or "", provider=provider)
        if err is exc:
            raise
        scrub(exc)
        log.debug("%s %s: %s: %s", provider, model_id, type(err).__name__, err)
        raise err from exc
