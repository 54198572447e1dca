"""Every error a request can end with maps to OpenAI's error JSON with the status an OpenAI
client expects (the table in docs/gateway.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from squirrel_models import AttemptRecord, errors
from squirrel_models.errors import (
    AllCoolingDown,
    AuthenticationError,
    BudgetExceeded,
    BudgetStoreError,
    BudgetStoreTimeout,
    CapabilityNotSupported,
    ConfigError,
    ContentFiltered,
    ContextWindowExceeded,
    CostCeilingExceeded,
    DeadlineExceeded,
    FallbackExhausted,
    InvalidRequest,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelNotFound,
    PluginError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    RateLimitExceeded,
    RateLimitStoreError,
    RateLimitTooSmall,
    ServerError,
    UnpricedModel,
)
from squirrel_models_gateway import error_for


def exhausted(*errors: BaseException) -> FallbackExhausted:
    return FallbackExhausted([AttemptRecord(i + 1, f"p/m{i}", "p", "error", error=e) for i, e in enumerate(errors)])


CASES = [
    (InvalidRequest("bad", field="temperature"), 400, "invalid_value", {}),
    (ModelNotFound("p/x"), 404, "model_not_found", {}),
    (CapabilityNotSupported("none"), 400, "no_model_available", {}),
    (BudgetExceeded(scope="key:a", period="day", limit=Decimal(1), committed=Decimal(1), reserved=Decimal(0),
                    requested=Decimal("0.1")), 402, "budget_exceeded", {}),
    (CostCeilingExceeded(worst_case=Decimal(1), ceiling=Decimal("0.1")), 402, "cost_ceiling_exceeded", {}),
    (UnpricedModel("p/x"), 402, "unpriced_model", {}),
    (AllCoolingDown(retry_at=datetime.now(UTC), retry_in=2.5, models=["p/x"]), 503, "all_cooling_down",
     {"retry-after": "3"}),
    (DeadlineExceeded(timeout=1.0), 504, "deadline_exceeded", {}),
    (RateLimitExceeded(scope="key:a", kind="rpm", limit=10, used=10, requested=1, retry_in=0.2), 429,
     "rate_limit_exceeded", {"retry-after": "1"}),
    # a worst case above the whole limit never fits: a 429 was retried by clients for ever
    (RateLimitTooSmall(scope="model:p/x", kind="tpm", limit=100, requested=140), 400,
     "request_exceeds_rate_limit", {}),
    (BudgetStoreError("down", operation="reserve"), 503, "budget_store_unavailable", {}),
    # a shared rate-limit store that is down (Redis killed or hung, fail_closed): was a 500
    # without a code, "server_error", as if the gateway itself had failed
    (RateLimitStoreError("redis unavailable", operation="reserve"), 503,
     "rate_limit_store_unavailable", {}),
    (BudgetStoreTimeout("no answer", operation="settle"), 503, "budget_store_unavailable", {}),
    (ServerError("HTTP 500"), 502, "upstream_failed", {}),
    (ProviderTimeout("slow"), 502, "upstream_failed", {}),
    (MalformedResponse("not JSON"), 502, "upstream_failed", {}),
    (MidStreamError("cut", partial_text="Hel"), 502, "upstream_failed", {}),
    (ProviderConnectionError("refused"), 502, "upstream_failed", {}),
    (AuthenticationError("HTTP 401"), 502, "upstream_authentication", {}),
    (RateLimited(retry_after=7), 429, "upstream_rate_limited", {"retry-after": "7"}),
    (ContextWindowExceeded(), 400, "context_length_exceeded", {}),
    (ContentFiltered("no"), 400, "content_filter", {}),
    (InvalidRequestError("HTTP 400"), 400, "upstream_rejected", {}),
    # no model takes the request as sent: a 502 was retried by the SDKs, refused and billed again
    (InvalidRequestError("no tools", model_specific=True), 400, "upstream_rejected", {}),
    (exhausted(InvalidRequestError("no n", model_specific=True), ServerError("a")), 502, "upstream_failed", {}),
    (exhausted(ServerError("a"), ProviderConnectionError("b")), 502, "upstream_failed", {}),
    (exhausted(RateLimited(retry_after=3), RateLimited(retry_after=9)), 429, "upstream_rate_limited",
     {"retry-after": "3"}),
    (exhausted(ContextWindowExceeded(), ContextWindowExceeded()), 400, "context_length_exceeded", {}),
    (ConfigError("x", field="y"), 500, "configuration", {}),
    (PluginError("x"), 500, "configuration", {}),
    (RuntimeError("internal detail"), 500, None, {}),
]


@pytest.mark.parametrize(("exc", "status", "code", "headers"), CASES, ids=[type(c[0]).__name__ + str(i)
                                                                          for i, c in enumerate(CASES)])
def test_error_mapping(exc: BaseException, status: int, code: str | None, headers: dict[str, str]) -> None:
    got_status, body, got_headers = error_for(exc)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert got_headers == headers
    assert "internal detail" not in body["error"]["message"]  # foreign errors' text is not shown
    if isinstance(exc, InvalidRequest):
        assert body["error"]["param"] == "temperature"


def test_every_error_type_of_the_core_has_its_answer() -> None:
    """Each SquirrelError the core defines is in CASES, so a new one (or one the mapping
    forgot, as RateLimitStoreError was) cannot fall through to a 500 unnoticed; only a
    configuration or plugin fault is the gateway's own 500."""
    mapped = {type(c[0]) for c in CASES} | {type(e) for c in CASES if isinstance(c[0], FallbackExhausted)
                                          for e in c[0].errors}
    defined = {c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.SquirrelError)}
    abstract = {errors.SquirrelError, errors.ModelError, errors.ResourceExhausted}
    assert sorted(c.__name__ for c in defined - mapped - abstract) == []
