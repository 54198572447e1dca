"""The one parser of upstream rate-limit headers: every form providers send, and garbage
ignored (never an error)."""

from __future__ import annotations

import email.utils
import math

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_waits_are_no_wait_said(value: str) -> None:
    # float() reads all of these: a wait of NaN or infinity seconds held a model for ever.
    for name in ("retry-after", "retry-after-ms"):
        assert parse_rate_limits(httpx.Headers({name: value}), now=NOW) is None
    got = parse(x_ratelimit_remaining_requests="0", x_ratelimit_reset_requests=value,
                x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens=f"{value}s")
    assert got is not None and got.requests_reset is None and got.tokens_reset is None
    err = error_from_status(429, httpx.Headers({"retry-after": value}), b"{}")
    assert err.retry_after is None


_NUMBER = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 400, "9" * 5000, "-3", "0", "1.5",
                     "", " ", "1.2.3", "0x10", "1_000"]),
    st.floats().map(repr), st.integers(-(10**20), 10**20).map(str),
    st.text(alphabet="0123456789.eE+-_ infa", max_size=12))
_HEADER_VALUE = st.one_of(
    _NUMBER, _NUMBER.map(lambda n: f"{n}s"), _NUMBER.map(lambda n: f"{n}m{n}s"),
    st.builds(lambda a, b, c: f"limit={a}, remaining={b}, reset={c}", _NUMBER, _NUMBER, _NUMBER),
    st.builds(lambda a, b: f'"p";r={a};t={b}, "q";r={b}', _NUMBER, _NUMBER),
    st.builds(lambda a, b: f'"p";q={a};w={b}', _NUMBER, _NUMBER),
    st.builds(lambda n: email.utils.formatdate(NOW + n, usegmt=True), st.integers(-10**9, 10**9)),
    st.sampled_from(["Wed, 21 Oct 9999 07:28:00 GMT", "Mon, 01 Jan 0001 00:00:00 GMT"]),
    st.text(max_size=40))
_HEADER_NAMES = ("retry-after", "retry-after-ms", "ratelimit", "ratelimit-policy",
                 "ratelimit-remaining", "ratelimit-limit", "ratelimit-reset",
                 *(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                   for kind in ("requests", "tokens")))


@settings(max_examples=600, derandomize=True, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(_HEADER_NAMES), _HEADER_VALUE, max_size=6),
       status=st.sampled_from([200, 429, 503]))
def test_any_header_values_are_finite_numbers_or_nothing(headers: dict[str, str],
                                                         status: int) -> None:
    # "Values that do not parse are ignored, never an error": 400 digits in a RateLimit
    # field raised OverflowError, which threw away the answer it came with.
    got = parse_rate_limits(headers, now=NOW)
    for value in () if got is None else attrs.astuple(got):
        assert value is None or (math.isfinite(value) and value >= 0), got
    err = error_from_status(status, headers, b'{"error": {"message": "slow down"}}')
    assert getattr(err, "retry_after", None) is None or math.isfinite(err.retry_after)


@pytest.mark.parametrize("digits", [3, 400, 5000])
def test_a_context_error_with_any_number_is_a_context_error(digits: int) -> None:
    # int() of 4,301 digits raises ValueError: the 400 became "the provider raised ValueError".
    n = "9" * digits
    err = error_from_status(400, {}, {"error": {
        "code": "context_length_exceeded",
        "message": f"maximum context length is {n} tokens, requested {n} tokens"}})
    assert type(err).__name__ == "ContextWindowExceeded"
    assert err.window == (999 if digits == 3 else None)
