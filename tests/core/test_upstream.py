"""squirrel_models.upstream: an HTTP upstream's status, headers and body -> the core's errors,
Retry-After forms, the boundary, and the option validators the HTTP plugins share."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import attrs
import pytest
from squirrel_models import (
    AuthenticationError,
    ConfigError,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    Secret,
    ServerError,
)
from squirrel_models.upstream import (
    MAX_MESSAGE,
    boundary,
    choice_list,
    content_text,
    context_window_exceeded,
    decode_error_body,
    describe_error,
    endpoint,
    error_fields,
    error_from_status,
    headers_without_credentials,
    http_url,
    is_context_overflow,
    json_body,
    parse_retry_after,
    positive_number,
    scrub,
    string_or_none,
)

from ..support import secret_scanner

CANARY = secret_scanner.canary("sk-up-3b9d0e7a21c4Xw")


def err(message: str, etype: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


# --- status + body -> error ----------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "headers", "kind"), [
    (400, err("This model's maximum context length is 8192 tokens. However, your messages resulted in "
              "9000 tokens.", code="context_length_exceeded"), {}, ContextWindowExceeded),
    (400, err("Input is too long for the context window", code=None), {}, ContextWindowExceeded),
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 5000",
           "error_type": "validation"}, {}, ContextWindowExceeded),  # TGI
    (400, {"error": {"code": 400, "message": "request (5000 tokens) exceeds the available context size "
                     "(2048 tokens)", "type": "exceed_context_size_error", "n_prompt_tokens": 5000,
                     "n_ctx": 2048}}, {}, ContextWindowExceeded),  # llama.cpp
    (400, err("filtered", code="content_filter"), {}, ContentFiltered),
    (400, {"error": {"message": "x", "code": "content_filter",
                     "innererror": {"code": "ResponsibleAIPolicyViolation"}}}, {}, ContentFiltered),
    (429, err("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "3"}, RateLimited),
    (429, err("quota", "insufficient_quota", "insufficient_quota"), {"retry-after": "3"}, RateLimited),
    (402, err("out of credits"), {}, RateLimited),
    (401, err("Incorrect API key provided: sk-ab***cd", code="invalid_api_key"), {}, AuthenticationError),
    (403, err("forbidden"), {}, AuthenticationError),
    (400, err("bad"), {}, InvalidRequestError),
    (404, err("no such model", code="model_not_found"), {}, InvalidRequestError),
    (422, {"detail": [{"msg": "field required"}]}, {}, InvalidRequestError),
    (409, b"conflict", {}, ServerError),  # OpenAI's lock timeout: transient, retried
    (408, err("timeout"), {}, ProviderTimeout),
    (500, err("boom", "server_error"), {}, ServerError),
    (503, b"overloaded", {"retry-after": "2"}, ServerError),
    # Anthropic's Messages API: overloaded, and a prompt longer than the window
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {"retry-after": "2"},
     ServerError),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "prompt is too long: 210000 tokens > 200000 maximum"}}, {},
     ContextWindowExceeded),
    (302, b"", {}, MalformedResponse),
])
def test_status_mapping(status: int, body: Any, headers: dict[str, str], kind: type[ModelError]) -> None:
    e = error_from_status(status, headers, body)
    assert type(e) is kind and e.status_code == status
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if status in (401, 403):
        assert "sk-ab" not in str(e) and "forbidden" not in str(e)  # upstream auth messages are not quoted
    if kind is ContextWindowExceeded:
        assert isinstance(e, ContextWindowExceeded) and not e.retryable
        if b"8192" in raw:
            assert (e.window, e.needed) == (8192, 9000)
        if b"2048" in raw:
            assert (e.window, e.needed) == (2048, 5000)
        if b"200000" in raw:
            assert (e.window, e.needed) == (200000, 210000)
    if status == 429 and b"insufficient_quota" not in raw:
        assert isinstance(e, RateLimited) and e.retry_after == 3.0 and e.retryable
    if status == 402 or b"insufficient_quota" in raw:
        assert isinstance(e, RateLimited) and e.retry_after is None and not e.retryable  # out of credit
    if status in (503, 529):
        assert e.retry_after == 2.0
    elif not isinstance(e, RateLimited):
        assert e.retry_after is None  # every ModelError has it (a 500's was an AttributeError)


def test_bytes_bodies_are_decoded() -> None:
    e = error_from_status(404, {}, json.dumps(err("no such model", code="model_not_found")).encode())
    assert str(e) == "HTTP 404 (model_not_found): no such model"
    assert str(error_from_status(500, {}, b"\xffbroken")) == "HTTP 500: \ufffdbroken"


DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON that no decoder reads: too deeply nested


@pytest.mark.parametrize(("status", "kind"), [(401, AuthenticationError), (400, InvalidRequestError),
                                              (429, RateLimited), (500, ServerError)])
@pytest.mark.parametrize("body", [DEEP, b'{"error": ' + DEEP + b"}", b"\xff" + DEEP],
                         ids=["deep", "deep-error", "not-utf8"])
def test_an_error_body_nobody_can_decode_is_text_and_the_status_decides(status: int, kind: type[ModelError],
                                                                         body: bytes) -> None:
    """A body nested too deeply to read (it raised RecursionError: the plugin's boundary saw a
    bug, so a 500 was not retried and a 401 was not an authentication error)."""
    err = error_from_status(status, {}, body)
    assert type(err) is kind
    assert decode_error_body(body) == body.decode("utf-8", "replace")


def test_messages_are_redacted_folded_and_cut() -> None:
    Secret(CANARY)
    e = error_from_status(400, {}, err(f"bad\n\n  key {CANARY} " + "x" * 1000, code="invalid_value"))
    text = str(e)
    assert CANARY not in text and "***" in text and "\n" not in text
    assert text.startswith("HTTP 400 (invalid_value): bad key *** x")
    assert text.endswith("...") and len(text) < MAX_MESSAGE + 40
    assert describe_error(None, "overloaded", "busy") == "upstream error (overloaded): busy"
    assert describe_error(401, "invalid_api_key", "key sk-x", quote=False) == "HTTP 401 (invalid_api_key)"


@pytest.mark.parametrize(("body", "fields"), [
    (err("m", "t", "c"), ("t", "c", "m")),
    ({"error": "text"}, ("", "", "text")),
    ({"error": "text", "error_type": "overloaded"}, ("overloaded", "", "text")),  # TGI
    ({"detail": [{"msg": "field required"}]}, ("", "", "field required")),  # FastAPI
    ({"error": {"message": "x", "code": "content_filter", "innererror": {"code": "Azure"}}}, ("", "Azure", "x")),
    ("plain text", ("", "", "plain text")),
    (None, ("", "", "")),
])
def test_error_fields_are_read_leniently(body: Any, fields: tuple[str, str, str]) -> None:
    assert error_fields(body)[:3] == fields


def test_context_helpers() -> None:
    assert is_context_overflow("This model's maximum context length is 4096 tokens")
    assert not is_context_overflow("rate limit reached")
    e = context_window_exceeded("upstream error (validation)", "`max_new_tokens` must be <= 1024. Given: 2000")
    assert (e.window, e.needed, e.status_code) == (1024, 2000, None)
    e = context_window_exceeded("x", "no numbers", {"n_ctx": 512, "n_prompt_tokens": True})
    assert (e.window, e.needed) == (512, None)


# --- Retry-After -------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": "-4"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "9"}) == 9
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now.timestamp()) == pytest.approx(30)
    assert parse_retry_after({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "20ms"}) == 90
    assert parse_retry_after({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "20ms",
                              "x-ratelimit-remaining-tokens": "0"}) == pytest.approx(0.02)
    assert parse_retry_after({"x-ratelimit-reset-tokens": "6m0s"}) == 360
    assert parse_retry_after({"x-ratelimit-reset-tokens": "2"}) == 2
    assert parse_retry_after({"x-ratelimit-reset-tokens": "6 minutes"}) is None
    assert parse_retry_after({"ratelimit": '"api";r=0;t=55'}) == 55  # the Hub's IETF header
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# --- the boundary --------------------------------------------------------------------------


class Upstream(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.server_message = message
        super().__init__(f"{status} from https://upstream.test: {message}")


def translate(exc: BaseException) -> ModelError | None:
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, Upstream):
        return error_from_status(exc.status, {}, err(exc.server_message))
    return None


def test_boundary_translates_scrubs_and_names_the_model(caplog: pytest.LogCaptureFixture) -> None:
    Secret(CANARY)
    log = logging.getLogger("squirrel_models.test_upstream")
    caplog.set_level(logging.DEBUG, logger=log.name)
    with pytest.raises(ServerError) as info, boundary(translate, provider="p", model_id="p/m", log=log):
        raise Upstream(500, f"echo {CANARY}")
    e = info.value
    assert (e.model_id, e.provider, e.status_code) == ("p/m", "p", 500)
    assert isinstance(e.__cause__, Upstream) and "https://upstream.test" not in str(e)
    assert CANARY not in "".join(traceback.format_exception(e))  # the cause was scrubbed
    assert CANARY not in e.__cause__.server_message  # type: ignore[attr-defined]
    assert any("ServerError" in r.getMessage() for r in caplog.records)


def test_boundary_lets_model_errors_and_bugs_through() -> None:
    log = logging.getLogger("squirrel_models.test_upstream")
    mine = ProviderTimeout("slow")
    with pytest.raises(ProviderTimeout) as info, boundary(translate, provider="p", model_id=None, log=log):
        raise mine
    assert info.value is mine and info.value.model_id == "" and info.value.provider == "p"
    with pytest.raises(KeyError), boundary(translate, provider="p", model_id="p/m", log=log):
        raise KeyError("a bug")


def test_one_boundary_guards_many_calls_also_at_once() -> None:
    """A boundary keeps no state of a call (a provider keeps one per model): each failure is
    translated afresh, chained to its own cause and scrubbed, also when calls overlap."""
    Secret(CANARY)
    log = logging.getLogger("squirrel_models.test_upstream")
    guard = boundary(translate, provider="p", model_id="p/m", log=log)
    with pytest.raises(ServerError) as outer, guard:
        with pytest.raises(ServerError) as inner, guard:
            raise Upstream(502, f"inner {CANARY}")
        raise Upstream(500, "outer")
    assert (inner.value.status_code, outer.value.status_code) == (502, 500)
    assert "inner" in str(inner.value) and "outer" in str(outer.value)
    assert inner.value.__cause__ is not outer.value.__cause__
    for e in (inner.value, outer.value):
        assert e.model_id == "p/m" and CANARY not in "".join(traceback.format_exception(e))
    with guard:
        pass  # success: nothing to translate


def test_boundary_names_the_endpoint_of_connection_errors_and_timeouts() -> None:
    log = logging.getLogger("squirrel_models.test_upstream")

    def to_conn(exc: BaseException) -> ModelError | None:
        if isinstance(exc, ConnectionRefusedError):
            return ProviderConnectionError("connection failed (ConnectError)")
        return translate(exc)

    where = endpoint("http://127.0.0.1:8081/v1")
    with pytest.raises(ProviderConnectionError) as info, boundary(
            to_conn, provider="p", model_id="p/m", log=log, endpoint=where):
        raise ConnectionRefusedError("refused")
    assert str(info.value) == "connection failed (ConnectError) (to 127.0.0.1:8081)"
    with pytest.raises(ProviderTimeout) as t, boundary(translate, provider="p", model_id=None,
                                                       log=log, endpoint=where):
        raise ProviderTimeout("no answer in time")
    assert str(t.value) == "no answer in time (to 127.0.0.1:8081)"
    with pytest.raises(ServerError) as s, boundary(translate, provider="p", model_id=None,
                                                   log=log, endpoint=where):
        raise Upstream(500, "boom")
    assert "127.0.0.1" not in str(s.value)  # the server answered: its status says it all
    assert endpoint("https://api.openai.com/v1") == "api.openai.com:443"
    assert endpoint("http://[::1]/v1") == "[::1]:80"
    assert endpoint("not a url") is None and endpoint(None) is None


def test_scrub_leaves_clean_exceptions_alone() -> None:
    Secret(CANARY)
    inner = ValueError(f"has {CANARY}", 3)
    outer = RuntimeError("clean")
    outer.__cause__ = inner
    args = outer.args
    scrub(outer)
    assert outer.args is args and inner.args == ("has ***", 3)


# --- option validators ---------------------------------------------------------------------


@attrs.frozen
class Options:
    base_url: str = attrs.field(default="https://api.example.test/v1",
                                validator=http_url(example="https://api.example.test/v1"))
    proxy: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        http_url(example="http://127.0.0.1:8080/v1", secret="token", option="token_env")))
    headers: dict[str, str] = attrs.field(factory=dict, validator=headers_without_credentials())
    timeout: float = attrs.field(default=1.0, validator=positive_number)


@pytest.mark.parametrize(("options", "field", "says"), [
    ({"base_url": "ftp://x"}, "base_url", "such as https://api.example.test/v1"),
    ({"base_url": "https://"}, "base_url", "http(s) URL"),
    ({"base_url": "https://user:pw@host/v1"}, "base_url", "named by api_key_env"),
    ({"base_url": "https://host/v1?key=x"}, "base_url", "a query"),
    ({"proxy": "https://host/v1#x"}, "proxy", "put the token in the environment variable named by token_env"),
    # before: accepted, then every request failed (a ValueError the plugin did not map, or a
    # bad request URL), or the URL silently lost its blank
    ({"base_url": "http://127.0.0.1:99999/v1"}, "base_url", "1..65535"),
    ({"base_url": "http://127.0.0.1:abc/v1"}, "base_url", "1..65535"),
    ({"base_url": "http://127.0.0.1:0/v1"}, "base_url", "1..65535"),
    ({"base_url": "http://[::1/v1"}, "base_url", "http(s) URL"),
    ({"base_url": "http://[::1/v1?key=sk-x"}, "base_url", "a query"),
    ({"base_url": "http://h/v1\n"}, "base_url", "no blanks"),
    ({"base_url": "http://h/v1 x"}, "base_url", "no blanks"),
    ({"headers": {"Authorization": "Bearer x"}}, "headers.Authorization", "the key in api_key_env"),
    ({"headers": {"X-API-Key": "x"}}, "headers.X-API-Key", "must not be set here"),
    # before: accepted as plain options (shown in reprs, never redacted) although headers
    # are documented as never credentials
    ({"headers": {"x-goog-api-key": "x"}}, "headers.x-goog-api-key", "must not be set here"),
    ({"headers": {"Ocp-Apim-Subscription-Key": "x"}}, "headers.Ocp-Apim-Subscription-Key", "must not be set here"),
    ({"headers": {"X-Auth-Token": "x"}}, "headers.X-Auth-Token", "must not be set here"),
    ({"headers": {"Cookie": "session=x"}}, "headers.Cookie", "must not be set here"),
    ({"headers": {"X-Trace": 1}}, "headers", "must be strings"),
    # before: accepted, then every request failed in the HTTP client ("provider raised
    # ValueError / UnicodeEncodeError / IDNAError: a bug in its plugin", or a retried
    # LocalProtocolError)
    ({"headers": {"bad header": "x"}}, "headers", "is not a header name"),
    ({"headers": {"": "x"}}, "headers", "is not a header name"),
    ({"headers": {"X-Trace:": "x"}}, "headers", "is not a header name"),
    ({"headers": {"X-Trace": "a\r\nX-Injected: 1"}}, "headers.X-Trace", "holds '\\r' at index 1"),
    ({"headers": {"X-Trace": "\x00"}}, "headers.X-Trace", "printable ASCII"),
    ({"headers": {"X-Title": "caf\u00e9"}}, "headers.X-Title", "holds '\u00e9' at index 3"),
    ({"base_url": "http://a..b/v1"}, "base_url", "http(s) URL"),
    ({"base_url": "http://" + "a" * 64 + ".example/v1"}, "base_url", "http(s) URL"),
    ({"base_url": "http://xn--/v1"}, "base_url", "http(s) URL"),
    ({"timeout": 0}, "timeout", "finite number > 0"),
    ({"timeout": float("inf")}, "timeout", "finite number > 0"),
    ({"timeout": True}, "timeout", "finite number > 0"),
])
def test_validators_name_the_field(options: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Options(**options)
    assert info.value.field == field and says in str(info.value), str(info.value)


def test_a_refused_header_value_is_not_shown() -> None:
    """A header value may be private (a tenant id, a key pasted in the wrong place): the error
    names the header and the character, never the value."""
    for value in (CANARY + "\n", CANARY + "\u00e9", "\x00" + CANARY):
        with pytest.raises(ConfigError) as info:
            Options(headers={"X-Tenant": value})
        assert info.value.field == "headers.X-Tenant"
        texts = [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        secret_scanner.collect(*texts)
        assert not secret_scanner.leaky(texts)


def test_validators_accept_good_values() -> None:
    o = Options(base_url="http://127.0.0.1:9/v1", headers={"X-Trace": "1"}, timeout=2)
    assert Options(headers={"OpenAI-Beta": "assistants=v2", "anthropic-version": "2023-06-01",
                            "HTTP-Referer": "https://x", "X-Title": "t", "User-Agent": "u"})
    assert Options(base_url="http://[::1]:8080/v1") and Options(base_url="https://h.example/v1/")
    assert Options(headers={"X-Title": "my app\t1", "X-Empty": "", "x!#$%&'*+.^_`|~-1": "v"})
    for url in ("http://llama_server:8080/v1", "https://b\u00fccher.example/v1", "http://xn--bcher-kva.example/v1",
                "http://" + "a" * 63 + ".example/v1", "http://[fe80::1%25eth0]/v1"):
        assert Options(base_url=url), url
    assert o.proxy is None and o.timeout == 2


def test_import_is_light() -> None:
    """Plugins import this when they load: no HTTP client, no email parser until needed."""
    code = ("import sys, squirrel_models.upstream; "
            "print(sorted(m for m in ('httpx', 'aiohttp', 'email.utils') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the shared codecs read any shape: MalformedResponse, never TypeError or KeyError ----------

@pytest.mark.parametrize("data", [b"{", b"[" * 100_000, b"1" * 5000, b"\xff\xfe", "", "nul"])
def test_json_body_refuses_what_is_not_json(data: Any) -> None:
    with pytest.raises(MalformedResponse, match="not valid JSON"):
        json_body(data)


def test_json_body_reads_json() -> None:
    assert json_body(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


#: What json reads and a fast decoder may refuse or read otherwise (orjson reads integers
#: beyond 64 bits as floats; msgspec does not): json's values, with or without msgspec.
_EDGES = [b'{"n": 123456789012345678901234567890}', b'[NaN, Infinity, -Infinity]', b'[1e400]',
          b'{"s": "\\ud800"}', '{"a": 1}'.encode("utf-16"), b'{"a": 1, "a": 2}',
          b'{"t": "caf\xc3\xa9 \\u2028", "f": 0.1, "z": -0.0, "e": 1E-7}']


@pytest.mark.parametrize("data", _EDGES)
@pytest.mark.parametrize("fast", [True, False])
def test_json_body_reads_what_json_reads(data: bytes, fast: bool, monkeypatch) -> None:
    """msgspec (the ``fast`` extra) decodes answers when installed; whatever it refuses goes
    to json, so every body reads as json reads it (the same values, the same errors)."""
    from squirrel_models import fastjson

    if fast:
        pytest.importorskip("msgspec")
        assert fastjson.available()
    else:
        monkeypatch.setattr(fastjson, "_FAST", [None])
    got, want = json_body(data), json.loads(data)
    assert repr(got) == repr(want)  # NaN == NaN is False; the reprs are equal


@pytest.mark.parametrize("fast", [True, False])
def test_json_body_refuses_the_same_with_or_without_msgspec(fast: bool, monkeypatch) -> None:
    from squirrel_models import fastjson

    if fast:
        pytest.importorskip("msgspec")
    else:
        monkeypatch.setattr(fastjson, "_FAST", [None])
    for data in (b"{", b"[" * 100_000, b"1" * 5000, b"\xff\xfe", b"", b"nul"):
        with pytest.raises(MalformedResponse, match="not valid JSON"):
            json_body(data)


def test_fast_dumps_writes_what_json_writes() -> None:
    """For the values a request body is built of, msgspec's JSON has json's values."""
    from squirrel_models.upstream import fast_dumps

    dumps = fast_dumps()
    if dumps is None:
        pytest.skip("msgspec is not installed")
    body = {"model": "m", "messages": [{"role": "user", "content": "caf\u00e9 \"q\" \\ \n\t\u2028 \U0001f600"},
                                       {"role": "assistant", "content": None}],
            "max_tokens": 256, "temperature": 0.1, "top_p": 1, "stop": ["\u0000"], "stream": True}
    want = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(dumps(body)) == json.loads(want)
    with pytest.raises((TypeError, ValueError)):
        dumps({"content": "\ud800"})  # a lone surrogate: the caller falls back to json


@pytest.mark.parametrize("value", [{"0": {}}, 1, "abc", 1.5, True, [{}, 1], ["x"]])
def test_choice_list_refuses_other_shapes(value: Any) -> None:
    with pytest.raises(MalformedResponse):
        choice_list(value)


def test_choice_list_reads_lists() -> None:
    assert choice_list(None) == [] and choice_list([]) == [] and choice_list([{"a": 1}]) == [{"a": 1}]


@pytest.mark.parametrize("value", [3, 1.5, {"text": "x"}, [{"type": "text", "text": 3}], [1], [{"text": ["a"]}]])
def test_content_text_refuses_other_shapes(value: Any) -> None:
    with pytest.raises(MalformedResponse):
        content_text(value)


def test_content_text_reads_text_and_parts() -> None:
    assert content_text(None) == "" and content_text("hi") == "hi"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, "b",
             {"type": "text", "text": None}, {"text": "c"}]
    assert content_text(parts) == "abc"


def test_string_or_none() -> None:
    assert string_or_none(None, "finish_reason") is None and string_or_none("stop", "x") == "stop"
    with pytest.raises(MalformedResponse, match="finish_reason is not a string"):
        string_or_none(1, "finish_reason")
