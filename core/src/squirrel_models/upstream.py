"""What an HTTP upstream's answers mean, for provider plugins that call one.

Pure functions over a status code, headers and an error body, plus the option validators such
plugins share. No HTTP client is imported here: each plugin translates its own client's
exceptions (httpx, aiohttp, huggingface_hub...) and hands the status, headers and body of an
error answer to :func:`error_from_status`:

=====================================================  =========================================
upstream                                               squirrel-models error
=====================================================  =========================================
401, 403                                               :class:`AuthenticationError` (the
                                                       upstream message is not quoted)
``code: content_filter`` / ``content_policy_violation`` :class:`ContentFiltered`
``code: context_length_exceeded``, or a 4xx whose      :class:`ContextWindowExceeded` (``window``
message speaks of the context length                   and ``needed`` when the body tells)
402, 429 ``insufficient_quota`` (out of credit)        :class:`RateLimited`, not retryable
429                                                    :class:`RateLimited` (``retry_after`` from
                                                       :func:`parse_retry_after`)
408                                                    :class:`ProviderTimeout`
409 (a conflict: OpenAI's lock timeout)                :class:`ServerError`, retryable
400, 404, 413, 422 and other 4xx                       :class:`InvalidRequestError`
5xx                                                    :class:`ServerError` (``retry_after`` too,
                                                       when a 502/503/504/529 says when to come back)
=====================================================  =========================================

It also holds the OpenAI chat format's small codecs every such plugin needs (messages and
tool calls out; bodies, choices, content and tool-call fields in): :func:`message_dict`,
:func:`tool_call_dict`, :func:`json_body`, :func:`choice_list`, :func:`content_text`,
:func:`string_or_none`, :func:`arguments_text`, :func:`text_or_none`. Each reads an answer of
any shape: what the protocol does not allow is a :class:`MalformedResponse`, never a
``TypeError``, ``KeyError`` or ``AttributeError``.

Messages are built from the status code, the upstream error ``type``/``code`` and the upstream
message passed through :func:`squirrel_models.secrets.redact`. :func:`boundary` is the context
manager each plugin wraps its upstream calls in, with its own translation function.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from .errors import (
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
    SquirrelError,
)
from .fastjson import fast_dumps, json_body
from .optionchecks import (
    extra_body_fields,
    header_name,
    header_value,
    headers_without_credentials,
    http_url,
    positive_number,
)
from .ratelimit import UpstreamLimits, new_upstream_limits
from .secrets import redact, sanitize
from .types import AIRequest, ImagePart, Message, TextPart, ToolCall

__all__ = [
    "MAPPING",
    "MAX_MESSAGE",
    "Boundary",
    "arguments_text",
    "boundary",
    "choice_list",
    "content_text",
    "context_window_exceeded",
    "decode_error_body",
    "describe_error",
    "endpoint",
    "error_fields",
    "error_from_status",
    "extra_body_fields",
    "fast_dumps",
    "foreign",
    "header_name",
    "header_value",
    "headers_without_credentials",
    "http_url",
    "is_context_overflow",
    "json_body",
    "message_dict",
    "parse_rate_limits",
    "parse_retry_after",
    "part_dict",
    "positive_number",
    "reraise",
    "request_fields",
    "request_sent",
    "scrub",
    "string_or_none",
    "text_or_none",
    "tool_call_dict",
    "unexpected",
]

#: Longest upstream message quoted in an error (the rest is cut).
MAX_MESSAGE = 300
_MAX_KIND = 64
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "responsibleaipolicyviolation"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"})
# OpenAI, vLLM, llama.cpp and TGI ("... tokens + `max_new_tokens` must be <= 2048. Given: 5000").
_CONTEXT_TEXT = re.compile(r"context (?:length|window|size)|maximum context|too many tokens|"
                           r"tokens \+ `max_new_tokens` must be <=|input is too long|prompt is too long", re.I)
# Anthropic: "prompt is too long: 210000 tokens > 200000 maximum" (needed > window).
_WINDOW = re.compile(r"(?:maximum context length is|context window of|limit of|context size(?: is)?|n_ctx[ =:]+|"
                     r"must be <=|tokens > )\s*\(?(\d+)", re.I)
_NEEDED = re.compile(r"(?:requested|resulted in|requested tokens \(|Given:|prompt is too long:)\s*(\d+)", re.I)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


# --- what the upstream said ---------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from (in order) ``retry-after-ms``, ``Retry-After``
    (seconds or an HTTP date), ``x-ratelimit-reset-requests``/``-tokens`` (durations such as
    ``1s``, ``6m0s``, ``20ms``) or the IETF ``RateLimit`` header (``"api";r=0;t=55``).
    ``headers`` must look names up case-insensitively (as httpx's and aiohttp's do) or hold
    them in lower case. None when no header says."""
    ms = headers.get("retry-after-ms")
    if ms is not None and (wait := _seconds(ms)) is not None:
        return wait / 1000
    ra = headers.get("retry-after")
    if ra is not None:
        wait = _seconds(ra)
        if wait is not None:
            return wait
        import email.utils  # only for an HTTP date: not worth its import time up front

        try:
            when = email.utils.parsedate_to_datetime(ra).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
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
    if resets:
        exhausted = [s for used_up, s in resets if used_up]
        return max(exhausted or [s for _, s in resets])
    rl = headers.get("ratelimit")
    if rl is not None and (m := re.search(r"\bt=(\d+(?:\.\d+)?)", rl)):
        return _seconds(m.group(1))
    return None


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None
                      ) -> UpstreamLimits | None:
    """What an answer's headers say about the provider's rate limits: the one place in the
    core that reads them (providers hand over their answers' headers, of successes and
    errors alike). None when no such header is there.

    Read: ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` for
    ``requests`` and ``tokens`` (OpenAI and the many servers that copy it; resets as
    durations such as ``1s``, ``6m0s``, ``20ms``, as seconds, or as a Unix time); the IETF
    fields, as ``RateLimit-Limit``/``-Remaining``/``-Reset``, as ``RateLimit: limit=100,
    remaining=50, reset=30``, or as ``RateLimit: "default";r=50;t=30`` with
    ``RateLimit-Policy: "default";q=100;w=60`` (the tightest policy wins), counted as
    requests; and ``Retry-After`` (or ``retry-after-ms``). Values that do not parse are
    ignored, never an error. ``headers`` must look names up case-insensitively (as httpx's and
    aiohttp's do) or hold them in lower case.
    """
    get = headers.get
    # Each name looked up once; only the values present are parsed (most answers carry a few
    # of these headers or none).
    rl, rr, rs = get("x-ratelimit-limit-requests"), get("x-ratelimit-remaining-requests"), \
        get("x-ratelimit-reset-requests")
    tl, tr, ts = get("x-ratelimit-limit-tokens"), get("x-ratelimit-remaining-tokens"), \
        get("x-ratelimit-reset-tokens")
    requests = (None if rl is None else _count(rl), None if rr is None else _count(rr),
                None if rs is None else _reset(rs, now))
    if requests[1] is None and (get("ratelimit-remaining") is not None or get("ratelimit")):
        got = _ietf(headers, lambda name: _count(get(name)), lambda name: _reset(get(name), now))
        if got is not None:
            requests = got
    ms, after = get("retry-after-ms"), get("retry-after")
    retry_after = None
    if ms is not None or after is not None:
        explicit = {k: v for k, v in (("retry-after-ms", ms), ("retry-after", after))
                    if v is not None}
        retry_after = parse_retry_after(explicit, now)
    tokens = (None if tl is None else _count(tl), None if tr is None else _count(tr),
              None if ts is None else _reset(ts, now))
    if requests == _NONE3 and tokens == _NONE3 and retry_after is None:
        return None
    return new_upstream_limits(*requests, *tokens, retry_after)


_NONE3 = (None, None, None)


def _count(value: str | None) -> int | None:
    """A whole count an upstream wrote (header or message), or None: what is no number, a
    negative one, and one of a float's infinity (400 digits) are no count, never an error."""
    if value is None:
        return None
    try:
        n = int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
    return n if n >= 0 else None


def _reset(value: str | None, now: float | None) -> float | None:
    seconds = _duration(value.strip()) if value else None
    if seconds is not None and seconds > 1e9:  # a Unix time, not a duration
        seconds = max(seconds - (time.time() if now is None else now), 0.0)
    return seconds


_IETF_ITEM = re.compile(r"(\w+)\s*=\s*\"?([\d.]+)")


def _ietf(headers: Mapping[str, str], count: Callable[[str], int | None],
          reset: Callable[[str], float | None]) -> tuple[int | None, int, float | None] | None:
    """(limit, remaining, reset) of the IETF rate-limit fields, in any of their drafts."""
    remaining = count("ratelimit-remaining")
    if remaining is not None:
        return count("ratelimit-limit"), remaining, reset("ratelimit-reset")
    combined = headers.get("ratelimit")
    if not combined:
        return None
    if not re.search(r";\s*r\s*=", combined):
        # The older draft in one field: "limit=100, remaining=50, reset=30".
        params = dict(_IETF_ITEM.findall(combined))
        left = _count(params.get("remaining"))
        if left is None:
            return None
        return _count(params.get("limit")), left, _seconds(params.get("reset", ""))
    # The current draft: 'RateLimit: "day";r=50;t=30, "minute";r=5;t=3' with quotas and
    # windows in 'RateLimit-Policy: "day";q=1000;w=86400, ...': the tightest item wins.
    policies: dict[str, dict[str, str]] = {}
    for item in (headers.get("ratelimit-policy") or "").split(","):
        policies[item.split(";", 1)[0].strip().strip('"')] = dict(_IETF_ITEM.findall(item))
    best: tuple[int | None, int, float | None] | None = None
    for item in combined.split(","):
        params = dict(_IETF_ITEM.findall(item))
        policy = policies.get(item.split(";", 1)[0].strip().strip('"'), {})
        left = _count(params.get("r"))
        if left is not None and (best is None or left < best[1]):
            best = (_count(policy.get("q")), left, _seconds(params.get("t", policy.get("w", ""))))
    return best


def _seconds(text: str) -> float | None:
    """A number of seconds as a header gives it, at least 0; None for what is no number,
    and for NaN and infinities (which ``float`` reads, as ``nan``, ``inf``, ``1e400``): such a
    wait held a model for ever."""
    try:
        value = float(text)
    except ValueError:
        return None
    return max(value, 0.0) if math.isfinite(value) else None


def _duration(text: str) -> float | None:
    """Seconds of a reset as upstreams write it (``6ms``, ``1m30s``, ``0.5``), or None.
    Short values are cached: they repeat from answer to answer (OpenAI's answers carry two),
    and a unit-suffixed one costs a failed ``float`` and a regular expression (about 3 us);
    a long one (an upstream's garbage) is parsed and not kept."""
    return _short_duration(text) if len(text) <= 32 else _parse_duration(text)


def _parse_duration(text: str) -> float | None:
    seconds = _seconds(text)
    if seconds is not None:
        return seconds
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = sum(float(n) * scale[u] for n, u in parts)
    return total if math.isfinite(total) else None  # 400 digits are a float's infinity


_short_duration = functools.lru_cache(maxsize=256)(_parse_duration)


def error_fields(body: Any) -> tuple[str, str, str, Mapping[str, Any]]:
    """(type, code, message, the error object) of an error body, leniently: OpenAI's
    ``{"error": {...}}`` (Azure's ``innererror.code`` wins), ``{"error": "text"}``, TGI's
    ``{"error": "text", "error_type": "validation"}``, FastAPI's ``{"detail": ...}`` or text."""
    err: Any = body
    etype = ""
    if isinstance(body, MAPPING):
        etype = str(body.get("error_type") or "")
        err = body.get("error", body.get("detail", body))
    if isinstance(err, list) and err:  # FastAPI validation errors
        err = err[0]
    if not isinstance(err, MAPPING):
        return etype, "", "" if err is None else str(err), {}
    inner = err.get("innererror")
    code = err.get("code")
    if isinstance(inner, MAPPING) and inner.get("code"):
        code = inner.get("code")
    message = err.get("message", err.get("msg", ""))
    return str(err.get("type") or etype or ""), str(code or ""), str(message or ""), err


def describe_error(status: int | None, kind: str, message: str, *, quote: bool = True) -> str:
    """``HTTP 429 (rate_limit_exceeded): <message>``: the upstream's error type/code and message
    folded onto one line, redacted (:func:`~squirrel_models.secrets.redact`: servers echo keys
    in either) and cut at :data:`MAX_MESSAGE` characters; the message is left out when
    ``quote`` is false."""
    head = f"HTTP {status}" if status else "upstream error"
    kind = redact(" ".join(kind.split()))
    if kind:
        head += f" ({kind[:_MAX_KIND] + '...' if len(kind) > _MAX_KIND else kind})"
    if quote and message:
        message = redact(" ".join(message.split()))
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "..."
        head += f": {message}"
    return head


def is_context_overflow(message: str) -> bool:
    """Whether an upstream message says the prompt does not fit the context window."""
    return _CONTEXT_TEXT.search(message) is not None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def context_window_exceeded(description: str, message: str, error: Mapping[str, Any] | None = None,
                            status: int | None = None) -> ContextWindowExceeded:
    """A :class:`ContextWindowExceeded` with ``window`` and ``needed`` taken from the error
    object (llama.cpp's ``n_ctx``/``n_prompt_tokens``) or else from the upstream message."""
    error = error or {}
    window, needed = _int(error.get("n_ctx")), _int(error.get("n_prompt_tokens"))
    if window is None and (m := _WINDOW.search(message)):
        window = _count(m.group(1))
    if needed is None and (m := _NEEDED.search(message)):
        needed = _count(m.group(1))
    return ContextWindowExceeded(description, needed=needed, window=window, status_code=status)


def decode_error_body(raw: bytes | bytearray | str) -> Any:
    """The value of an error answer's body: its JSON if it parses, else its text. A body that
    is not JSON in any way (nested too deeply to read, not UTF-8, a number too long) is text:
    the status still says what the error is."""
    try:
        return json_body(raw)
    except MalformedResponse:
        return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")


def error_from_status(status: int, headers: Mapping[str, str], body: Any) -> ModelError:
    """The :class:`ModelError` for an error answer: see the module docstring for the mapping.
    ``body`` is the decoded JSON, text, or raw bytes (decoded here: JSON if it parses).

    The error carries what the answer's rate-limit headers said (``rate_limits``, see
    :func:`parse_rate_limits`) and whether the upstream said it is out of credit
    (``out_of_credit``: 402, ``insufficient_quota``)."""
    err = _error_from_status(status, headers, body)
    err.rate_limits = parse_rate_limits(headers)
    return err


def _error_from_status(status: int, headers: Mapping[str, str], body: Any) -> ModelError:
    if isinstance(body, bytes | bytearray):
        body = decode_error_body(body)
    etype, code, message, err = error_fields(body)
    kind = code or etype
    low = {code.lower(), etype.lower()}
    text = describe_error(status, kind, message)
    if status in (401, 403):  # servers echo parts of the key in these messages
        return AuthenticationError(describe_error(status, kind, message, quote=False), status_code=status)
    if low & _FILTER_CODES:
        return ContentFiltered(text, status_code=status)
    if low & _CONTEXT_CODES or (400 <= status < 500 and status != 429 and is_context_overflow(message)):
        return context_window_exceeded(text, message, err, status)
    if status == 402 or (status == 429 and "insufficient_quota" in low):
        quota = RateLimited(text, retry_after=None, status_code=status)
        quota.retryable = False  # out of credit: waiting will not help
        quota.out_of_credit = True
        return quota
    if status == 429:
        return RateLimited(text, retry_after=parse_retry_after(headers), status_code=status)
    if status == 408:
        return ProviderTimeout(text, status_code=status)
    if status == 409:
        # A conflict says nothing wrong of the request: OpenAI answers it for a lock timeout,
        # and OpenAI's and Anthropic's own SDKs retry it. As an InvalidRequestError it ended
        # the request at once, no retry and no other model tried.
        return ServerError(text, status_code=status)
    if 400 <= status < 500:
        return InvalidRequestError(text, status_code=status)
    if status >= 500:
        server = ServerError(text, status_code=status)
        # 529: Anthropic's "overloaded", which sends Retry-After like a 503
        retry_after = parse_retry_after(headers) if status in (502, 503, 504, 529) else None
        if retry_after is not None:
            server.retry_after = retry_after
        if status == 504:
            # A gateway's timeout: it forwarded the request and gave up waiting while the
            # provider may still be generating (charged by charge_unanswered); a 502 or 503
            # is a proxy that could not forward it, or a refusal: $0.
            server.sent = True
        return server
    return MalformedResponse(describe_error(status, kind, "unexpected status"), status_code=status)


# --- the boundary --------------------------------------------------------------------------


def scrub(exc: BaseException) -> None:
    """Redact every known secret from ``exc`` and its causes, in place (their ``args`` and a
    ``server_message`` such as huggingface_hub's). :func:`squirrel_models.secrets.sanitize`
    does more: it also replaces the foreign exceptions on the chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        args = tuple(redact(a) if isinstance(a, str) else a for a in cur.args)
        if args != cur.args:
            with contextlib.suppress(Exception):
                cur.args = args
        server_message = getattr(cur, "server_message", None)
        if isinstance(server_message, str) and redact(server_message) != server_message:
            with contextlib.suppress(Exception):
                cur.server_message = redact(server_message)  # type: ignore[attr-defined]
        cur = cur.__cause__ or cur.__context__


def endpoint(url: str | None) -> str | None:
    """``host:port`` of ``url`` (the scheme's default port if none is given), for messages
    about connections; None if ``url`` has no host."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _name_endpoint(err: ModelError, where: str) -> None:
    """Say which host and port a connection error or timeout was about, once."""
    if not isinstance(err, ProviderConnectionError | ProviderTimeout) or not err.args:
        return
    message = str(err.args[0])
    if where not in message:
        with contextlib.suppress(Exception):
            err.args = (f"{message} (to {where})", *err.args[1:])


#: Client exceptions (by class name, along each one's MRO: httpx, httpcore, huggingface_hub's
#: httpx fork and aiohttp share these) raised after the request left, while its answer was
#: awaited: the upstream may have done, and billed, the work.
_AFTER_SEND = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError",
                         "ServerDisconnectedError", "SocketTimeoutError", "ClientPayloadError"})
#: Raised before the request left: no connection made, none free in the pool, the request's
#: body not written whole (a server acts on none of it).
_BEFORE_SEND = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "WriteError",
                          "WriteTimeout", "ProxyError", "UnsupportedProtocol", "InvalidURL",
                          "ClientConnectorError", "ConnectionTimeoutError",
                          "ConnectionRefusedError", "ClientProxyConnectionError"})


def request_sent(exc: BaseException) -> bool | None:
    """Whether an HTTP client's exception ``exc`` says the request had left when it failed
    (see :attr:`~squirrel_models.errors.ModelError.sent`): True for a read timeout or a
    connection lost while the answer was awaited, False for a connection never made or a
    request never written whole, None when its chain tells neither. A cause after the send
    wins (httpx-aiohttp reports a dropped connection as ``ConnectTimeout``, the aiohttp error
    on its cause tells)."""
    before = False
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names = {c.__name__ for c in type(cur).__mro__}
        if names & _AFTER_SEND:
            return True
        before = before or bool(names & _BEFORE_SEND)
        cur = cur.__cause__ or cur.__context__
    return False if before else None


class Boundary:
    """The context manager :func:`boundary` returns: a class, not a generator, so a call that
    succeeds pays two method calls and nothing else. It keeps no state between uses: one
    instance may guard any number of calls, also at once (a provider keeps one per model)."""

    __slots__ = ("_auth_hint", "_endpoint", "_log", "_model_id", "_provider", "_translate")

    def __init__(self, translate: Callable[[BaseException], ModelError | None], *, provider: str,
                 model_id: str | None, log: logging.Logger, endpoint: str | None = None,
                 auth_hint: str | None = None) -> None:
        self._translate, self._provider, self._model_id = translate, provider, model_id
        self._log, self._endpoint, self._auth_hint = log, endpoint, auth_hint

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception):
            return False  # success, cancellation, KeyboardInterrupt: untouched
        err = self._translate(exc)
        if err is None:
            if isinstance(exc, ModelError):
                sanitize(exc)  # ours, left as it is by ``translate``: its chain is still scrubbed
            return False  # not an upstream failure (a bug): raised as it is
        err.with_context(model_id=self._model_id or "", provider=self._provider)
        if err.sent is None:
            if isinstance(err, MalformedResponse) and (err.status_code or 200) < 300:
                # An answer came but could not be read: the provider generated, and billed,
                # it (see squirrel_models.unanswered); an error status's is refused, $0.
                err.sent = True
            elif err.status_code is None and err is not exc:
                err.sent = request_sent(exc)
        if self._endpoint:
            _name_endpoint(err, self._endpoint)
        hint = self._auth_hint
        if hint and isinstance(err, AuthenticationError) and hint not in str(err):
            err.args = (f"{err}; {redact(hint)}", *err.args[1:])
        if err is exc:
            sanitize(err)
            return False  # raised on as it is, its chain sanitized
        self._log.debug("%s %s: %s: %s", self._provider, self._model_id, type(err).__name__, err)
        try:
            raise err from exc
        finally:
            # Here, after the raise: it sets ``err.__context__`` to the client's exception
            # (the one being handled), so the chain is complete only now.
            sanitize(err)


def boundary(translate: Callable[[BaseException], ModelError | None], *, provider: str,
             model_id: str | None, log: logging.Logger,
             endpoint: str | None = None, auth_hint: str | None = None) -> Boundary:
    """Turn what the block raises into the :class:`ModelError` ``translate`` returns, raised
    ``from`` the original and naming ``model_id`` and ``provider``; a connection error or
    timeout also names ``endpoint`` (``host:port``, see :func:`endpoint`). The error leaves
    through :func:`~squirrel_models.secrets.sanitize`, so the client's exception on its chain
    (whose ``repr`` may hold the request's headers) is replaced by a redacted stand-in.
    Exceptions ``translate`` maps to None (cancellation, bugs) pass through untouched.

    ``auth_hint`` is added to an :class:`AuthenticationError`'s message: where the provider's
    credential comes from (the configuration field, never the credential), so a 401 says
    what to fix. The :class:`Boundary` returned holds no state of a call: keep one per model
    and use it for every call to that model."""
    return Boundary(translate, provider=provider, model_id=model_id, log=log, endpoint=endpoint,
                    auth_hint=auth_hint)


def foreign(exc: BaseException) -> bool:
    """``exc`` is not one of ours and is not what stops a program or a task: what
    :func:`unexpected` stands in for. An ordinary exception (``MemoryError`` aside) is; so is
    another ``BaseException`` a provider raised (``SystemExit`` from a ``sys.exit()`` in
    its client, a library's own ``BaseException`` subclass), and on asyncio a
    ``CancelledError`` while nobody cancels the task (a future its client's pool cancelled).
    ``KeyboardInterrupt``, ``GeneratorExit``, a real cancellation, and a group holding one,
    pass as they are."""
    if isinstance(exc, Exception):
        return not isinstance(exc, SquirrelError | MemoryError)
    return not _passes(exc)


def _passes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_passes(e) for e in exc.exceptions if not isinstance(e, Exception))
    if isinstance(exc, KeyboardInterrupt | GeneratorExit):
        return True
    import anyio

    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return not _spurious()
    return False


def _spurious() -> bool:
    """Whether a cancellation raised now on asyncio cancels nothing: the task is not being
    cancelled (anyio's cancel scopes and the manager's deadline cancel it through
    ``Task.cancel``). Under trio a provider cannot make a ``Cancelled``."""
    from .deadline import running_loop

    loop = running_loop()
    if loop is None:
        return False
    import asyncio

    task = asyncio.current_task(loop)
    return task is not None and task.cancelling() == 0


def unexpected(exc: BaseException, *, model_id: str, provider: str) -> ModelError:
    """What the manager raises when a provider raised what is not a :class:`ModelError` (a
    client library's error its plugin does not map, or the plugin's own bug): a
    :class:`ModelError` naming the provider and the exception's type, with its message
    redacted, chained ``from`` it (sanitized), and not retried on the same model (the
    fallback chain may try another). So a request still ends in a :class:`SquirrelError`.
    The call may have left before its plugin failed (a ``KeyError`` reading the answer):
    ``sent`` is True, so the attempt is charged as one left unanswered (see
    :mod:`squirrel_models.unanswered`), never a silent $0."""
    try:
        text = redact(str(exc))[:200]
    except Exception:  # a __str__ that raises: say what it was
        text = "(its message could not be shown)"
    err = ModelError(f"provider {provider!r} raised {type(exc).__name__} (not an error it maps: "
                     f"a bug in its plugin, or its client's error): {text}",
                     model_id=model_id, provider=provider)
    err.retryable = False
    err.sent = True
    err.__cause__ = exc
    sanitize(err)
    return err


def reraise(err: BaseException) -> NoReturn:
    """Raise ``err`` where another exception is being handled, its chain (cause and the
    context the raise adds) sanitized."""
    try:
        raise err
    finally:
        sanitize(err)


# --- the OpenAI chat format -------------------------------------------------------------


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    """A tool call in the OpenAI chat format."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def part_dict(p: TextPart | ImagePart) -> dict[str, Any]:
    """A content part in the OpenAI chat format."""
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text}
    image: dict[str, Any] = {"url": p.url}
    if p.detail is not None:
        image["detail"] = p.detail
    return {"type": "image_url", "image_url": image}


def message_dict(m: Message) -> dict[str, Any]:
    """A message in the OpenAI chat format (what is sent, and what is counted). An assistant
    message with tool calls and no text sends ``content: null``, as OpenAI does; a message of
    parts (images) sends the list of parts."""
    c = m.content
    d: dict[str, Any] = {"role": m.role,
                         "content": c if isinstance(c, str) else [part_dict(p) for p in c]}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        if not m.content:
            d["content"] = None
        d["tool_calls"] = [tool_call_dict(c) for c in m.tool_calls]
    return d


def request_fields(request: AIRequest) -> dict[str, Any]:
    """The OpenAI chat body fields for what ``request`` sets of ``top_p``, ``seed``, ``n``
    (when above 1), ``user`` and ``response_format`` (``stop``, ``temperature``, tools and
    the output cap are each plugin's to send: their names vary)."""
    out: dict[str, Any] = {}
    if request.top_p is not None:
        out["top_p"] = request.top_p
    if request.seed is not None:
        out["seed"] = request.seed
    if request.n != 1:
        out["n"] = request.n
    if request.user is not None:
        out["user"] = request.user
    if request.response_format is not None:
        out["response_format"] = request.response_format.to_openai()
    return out


def arguments_text(value: Any) -> str:
    """A call's arguments as JSON text: as sent, or encoded when a server sends an object."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False)
    raise MalformedResponse("tool call arguments are not text")


def text_or_none(value: Any, what: str) -> str | None:
    """A tool call's ``id`` or ``name``: a string or None, anything else is malformed."""
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"tool call {what} is not a string")


#: For ``isinstance`` checks of decoded JSON: a dict is a Mapping, and checking it first
#: spares the ABC's slower check (several per answer, one per stream event).
MAPPING = (dict, Mapping)

def choice_list(value: Any, what: str = "choices") -> list[Mapping[str, Any]]:
    """A ``choices`` array: a list of objects (empty or missing: ``[]``). An object, a number,
    a string or entries that are not objects: :class:`MalformedResponse`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedResponse(f"{what} is not a list")
    for entry in value:
        if not isinstance(entry, MAPPING):
            raise MalformedResponse(f"a {what} entry is not an object")
    return value


def content_text(value: Any, what: str = "message content") -> str:
    """A message's or delta's ``content`` as text: a string, None (no text) or a list of content
    parts whose ``text`` parts are joined (other part types carry no text). A part whose text
    is not a string, or content of any other type: :class:`MalformedResponse`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for part in value:
            if isinstance(part, str):
                out.append(part)
                continue
            if not isinstance(part, MAPPING):
                raise MalformedResponse(f"a {what} part is not an object")
            if part.get("type", "text") != "text":
                continue
            text = part.get("text")
            if text is None:
                continue
            if not isinstance(text, str):
                raise MalformedResponse(f"a {what} part's text is not a string")
            out.append(text)
        return "".join(out)
    raise MalformedResponse(f"{what} is not text")


def string_or_none(value: Any, what: str) -> str | None:
    """A field that is text or absent (``finish_reason``, ``model``): anything else is
    :class:`MalformedResponse`."""
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"{what} is not a string")
