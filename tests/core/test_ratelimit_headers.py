"""The one parser of upstream rate-limit headers: every form providers send, and garbage
ignored (never an error)."""

from __future__ import annotations

import email.utils

import httpx
import pytest
from squirrel_models.ratelimit import UpstreamLimits
from squirrel_models.upstream import error_from_status, parse_rate_limits

NOW = 1_800_000_000.0


def parse(**headers: str) -> UpstreamLimits | None:
    return parse_rate_limits(httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()}),
                             now=NOW)


def test_openai_style_headers() -> None:
    got = parse(x_ratelimit_limit_requests="60", x_ratelimit_remaining_requests="59",
                x_ratelimit_reset_requests="1s", x_ratelimit_limit_tokens="150000",
                x_ratelimit_remaining_tokens="149984", x_ratelimit_reset_tokens="6m0s")
    assert got == UpstreamLimits(60, 59, 1.0, 150000, 149984, 360.0, None)


@pytest.mark.parametrize(("reset", "seconds"), [
    ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("7", 7.0), ("0.25", 0.25),
    (str(int(NOW) + 30), 30.0),  # a Unix time, not a duration
])
def test_reset_forms(reset: str, seconds: float) -> None:
    got = parse(x_ratelimit_remaining_requests="3", x_ratelimit_reset_requests=reset)
    assert got is not None and got.requests_reset == pytest.approx(seconds)


def test_ietf_fields_in_every_draft() -> None:
    assert parse(RateLimit_Limit="10", RateLimit_Remaining="0", RateLimit_Reset="7") == \
        UpstreamLimits(requests_limit=10, requests_remaining=0, requests_reset=7.0)
    assert parse(RateLimit="limit=100, remaining=50, reset=30") == \
        UpstreamLimits(requests_limit=100, requests_remaining=50, requests_reset=30.0)
    got = parse(RateLimit='"day";r=50;t=30, "minute";r=5;t=3',
                RateLimit_Policy='"day";q=1000;w=86400, "minute";q=10;w=60')
    assert got == UpstreamLimits(requests_limit=10, requests_remaining=5, requests_reset=3.0)


def test_retry_after_forms() -> None:
    assert parse(Retry_After="3").retry_after == 3.0
    assert parse(retry_after_ms="250").retry_after == 0.25
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse(Retry_After=date).retry_after == pytest.approx(12.0)


@pytest.mark.parametrize("headers", [
    {}, {"content-type": "application/json"},
    {"x-ratelimit-remaining-requests": "lots"}, {"x-ratelimit-remaining-requests": "-3"},
    {"ratelimit": "nonsense"}, {"ratelimit": '"p";r=x;t=y'}, {"retry-after": "soon"},
])
def test_nothing_usable_is_none_never_an_error(headers: dict[str, str]) -> None:
    assert parse_rate_limits(httpx.Headers(headers), now=NOW) is None


def test_errors_carry_what_the_headers_said() -> None:
    err = error_from_status(429, httpx.Headers({"retry-after": "2",
                                                "x-ratelimit-remaining-requests": "0",
                                                "x-ratelimit-reset-requests": "2s"}), b"{}")
    assert err.rate_limits == UpstreamLimits(requests_remaining=0, requests_reset=2.0,
                                             retry_after=2.0)
    assert not err.out_of_credit
    quota = error_from_status(402, httpx.Headers({}), b'{"error": {"message": "pay up"}}')
    assert quota.out_of_credit and not quota.retryable and quota.rate_limits is None
