"""Errors as OpenAI's error JSON, with the status an OpenAI client expects.

One mapping, :func:`error_for`, from every exception a request can end with to
``(status, body, headers)``. Messages come from ``str(exc)`` of a
:class:`~squirrel_models.errors.SquirrelError`, which is redacted (no secret, whole, in part or
escaped); anything else is an internal error whose text is not shown.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from squirrel_models.errors import (
    AllCoolingDown,
    AuthenticationError,
    BudgetExceeded,
    BudgetStoreError,
    CapabilityNotSupported,
    ConfigError,
    ContentFiltered,
    ContextWindowExceeded,
    CostCeilingExceeded,
    DeadlineExceeded,
    FallbackExhausted,
    InvalidRequest,
    InvalidRequestError,
    ModelError,
    ModelNotFound,
    PluginError,
    RateLimited,
    RateLimitExceeded,
    RateLimitStoreError,
    RateLimitTooSmall,
    ResourceExhausted,
    SquirrelError,
    UnpricedModel,
)
from squirrel_models.fastjson import fast_dumps
from squirrel_models.secrets import redact

__all__ = ["GatewayError", "error_body", "error_for"]

log = logging.getLogger("squirrel_models.gateway")


class GatewayError(SquirrelError):
    """A refusal of the gateway's own (authentication, a model the key may not use, a body
    that is not JSON): ``status``, OpenAI ``type`` and ``code``, and ``param`` (the field)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        self.status, self.type, self.code, self.param = status, type, code, param
        super().__init__(message)


#: The longest message and ``param`` an error body carries: both may quote what the caller
#: sent (a model name, a field name), which must not make the answer as large as the body.
MAX_MESSAGE = 2000
MAX_PARAM = 200


def error_body(message: str, type: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON; ``message`` and ``param`` redacted and bounded."""
    text = redact(message)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3] + "..."
    if param is not None:
        param = redact(param)[:MAX_PARAM]
    return {"error": {"message": text, "type": type, "param": param, "code": code}}


def _retry_after(seconds: float | None) -> dict[str, str]:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return {}
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def _last_error(exc: FallbackExhausted) -> BaseException | None:
    errors = exc.errors
    return errors[-1] if errors else None


def error_for(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, OpenAI error body, extra headers)`` for ``exc``."""
    if isinstance(exc, GatewayError):
        return exc.status, error_body(str(exc), exc.type, exc.code, exc.param), {}
    if isinstance(exc, InvalidRequest):
        return 400, error_body(str(exc), "invalid_request_error", "invalid_value", exc.field), {}
    if isinstance(exc, ModelNotFound):
        return 404, error_body(str(exc), "invalid_request_error", "model_not_found", "model"), {}
    if isinstance(exc, CapabilityNotSupported):
        return 400, error_body(str(exc), "invalid_request_error", "no_model_available", "model"), {}
    if isinstance(exc, BudgetExceeded):
        return 402, error_body(str(exc), "insufficient_quota", "budget_exceeded"), {}
    if isinstance(exc, CostCeilingExceeded):
        return 402, error_body(str(exc), "insufficient_quota", "cost_ceiling_exceeded"), {}
    if isinstance(exc, UnpricedModel):
        return 402, error_body(str(exc), "insufficient_quota", "unpriced_model"), {}
    if isinstance(exc, AllCoolingDown):
        return 503, error_body(str(exc), "server_error", "all_cooling_down"), _retry_after(exc.retry_in)
    if isinstance(exc, DeadlineExceeded):
        return 504, error_body(str(exc), "timeout", "deadline_exceeded"), {}
    if isinstance(exc, RateLimitTooSmall):  # no wait helps: a 429 would be retried for ever
        return 400, error_body(str(exc), "invalid_request_error",
                            "request_exceeds_rate_limit"), {}
    if isinstance(exc, RateLimitExceeded):
        return 429, error_body(str(exc), "rate_limit_error", "rate_limit_exceeded"), \
            _retry_after(exc.retry_in)
    if isinstance(exc, ResourceExhausted):  # a kind added later: a refusal for lack of resources
        return 402, error_body(str(exc), "insufficient_quota", "resource_exhausted"), {}
    if isinstance(exc, BudgetStoreError):
        return 503, error_body(str(exc), "server_error", "budget_store_unavailable"), {}
    if isinstance(exc, RateLimitStoreError):  # a shared store (Redis) down: not our own fault
        return 503, error_body(str(exc), "server_error", "rate_limit_store_unavailable"), {}
    if isinstance(exc, FallbackExhausted):
        last = _last_error(exc)
        errors = exc.errors
        if errors and all(isinstance(e, RateLimited) for e in errors):
            ra = [e.retry_after for e in errors if isinstance(e, RateLimited) and e.retry_after]
            return 429, error_body(str(exc), "rate_limit_error", "upstream_rate_limited"), \
                _retry_after(min(ra) if ra else None)
        if errors and all(_client_fault(e) for e in errors) and last is not None:
            status, body, headers = error_for(last)
            body["error"]["message"] = redact(str(exc))
            return status, body, headers
        return 502, error_body(str(exc), "upstream_error", "upstream_failed"), {}
    if isinstance(exc, ModelError):
        if isinstance(exc, RateLimited):
            return 429, error_body(str(exc), "rate_limit_error", "upstream_rate_limited"), \
                _retry_after(exc.retry_after)
        if isinstance(exc, ContextWindowExceeded):
            return 400, error_body(str(exc), "invalid_request_error", "context_length_exceeded",
                                   "messages"), {}
        if isinstance(exc, ContentFiltered):
            return 400, error_body(str(exc), "invalid_request_error", "content_filter"), {}
        if isinstance(exc, InvalidRequestError):
            # model_specific too: the chain tried what the key may use and none takes the
            # request as sent (n > 1 where the server does not take n). A 5xx here made the
            # SDKs retry it twice, each retry refused the same way and billed again.
            return 400, error_body(str(exc), "invalid_request_error", "upstream_rejected"), {}
        if isinstance(exc, AuthenticationError):  # the gateway's upstream credentials, not the client's
            return 502, error_body(str(exc), "upstream_error", "upstream_authentication"), {}
        return 502, error_body(str(exc), "upstream_error", "upstream_failed"), {}
    if isinstance(exc, ConfigError | PluginError):
        return 500, error_body(str(exc), "server_error", "configuration"), {}
    if isinstance(exc, SquirrelError):
        return 500, error_body(str(exc), "server_error"), {}
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return 500, error_body(f"internal error ({type(exc).__name__})", "server_error"), {}


def _client_fault(e: BaseException) -> bool:
    """The request itself was refused, or the model cannot take it as sent (not a transient
    failure: the same request fails the same way again): the client should change it."""
    return isinstance(e, ContextWindowExceeded | ContentFiltered | InvalidRequestError)


def encode(body: dict[str, Any]) -> bytes:
    """``body`` as the JSON of an answer, an event or an error: UTF-8, and never an error
    itself. Text with a lone surrogate (an upstream may send ``"\\ud800"``, valid JSON that
    is not valid Unicode) cannot be UTF-8: such a body is written with ASCII escapes, which
    a client reads back as the same text. msgspec writes it when installed (in about a fifth
    of the time), ``json`` what msgspec refuses (such text included)."""
    fast = fast_dumps()
    if fast is not None:
        try:
            return fast(body)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            pass
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
