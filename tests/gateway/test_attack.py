"""The gateway under attack (issue 12's classes on what it added): any body, header or upstream
answer ends in OpenAI's error JSON with a 4xx naming the field, or an answer, never a 500 or a
traceback; text that is not valid Unicode is carried, not crashed on; a web page cannot make a
browser spend the gateway's budget; and a client that never sends its body or never reads the
answer does not hold the request, its reservation or its rate-limit slot past the deadline.
Every text collected here goes through the secret scanner."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models_gateway import GatewayThread

from ..support import secret_scanner
from ..support.faulty_server import FaultyServer
from ..support.serve import squirrel_serve
from ..support.stalls import runqueue_wait
from .conftest import (
    OTHER_KEY,
    TEAM_KEY,
    UPSTREAM_ENV,
    UPSTREAM_KEY,
    faulty_config,
    gateway,
    request_head,
)

AUTH = {"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"}
HI = [{"role": "user", "content": "Hi"}]


def post(gw: GatewayThread, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    r = httpx.post(gw.base_url + "/chat/completions", content=content, headers=headers or AUTH, timeout=30)
    secret_scanner.collect(r.text, *(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def assert_refused(r: httpx.Response) -> dict[str, Any]:
    """A 4xx in OpenAI's error JSON (the four keys), never a 5xx or a text body."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert len(err["message"]) <= 2000 and (err["param"] is None or len(err["param"]) <= 200)
    return dict(err)


# --- bad input -----------------------------------------------------------------------------

SURROGATE = "\ud800"


@pytest.mark.parametrize(("raw", "param"), [
    # a lone surrogate in a field name: the error that names it was a UnicodeEncodeError (500)
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"\\ud800":1}', "\\ud800"),
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi","\\udc00x":1}]}', "messages[0].\\udc00x"),
    ('{"model":"faulty/ok","messages":[{"role":"user","content":[{"type":"text","text":"a","\\ud800":1}]}]}',
     "messages[0].content[0].\\ud800"),
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"stream":true,'
     '"stream_options":{"\\ud800":true}}', "stream_options.\\ud800"),
    # an int too large for a float: an OverflowError (500)
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"temperature":1' + "0" * 400 + "}",
     "temperature"),
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"top_p":-1' + "0" * 400 + "}", "top_p"),
    # a role that is an object or an array: a TypeError (500)
    ('{"model":"faulty/ok","messages":[{"role":{},"content":"hi"}]}', "messages[0].role"),
    ('{"model":"faulty/ok","messages":[{"role":["user"],"content":"hi"}]}', "messages[0].role"),
    # a huge seed is named (its repr failed: "body")
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"seed":' + "9" * 4000 + "}", "seed"),
    # a schema 400 levels deep: it went on to routing, and the openai plugin met the recursion
    # limit deeper in the stack ("a bug in its plugin")
    ('{"model":"faulty/ok","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",'
     '"json_schema":{"name":"x","schema":' + '{"not":' * 400 + "{}" + "}" * 400 + "}}}", "response_format.schema"),
])
def test_hostile_values_are_a_400_naming_the_field(faulty_gw: GatewayThread, raw: str, param: str) -> None:
    err = assert_refused(post(faulty_gw, raw.encode()))
    assert err["param"] == param and err["code"] == "invalid_value"


def test_what_the_caller_sent_is_quoted_bounded(faulty_gw: GatewayThread) -> None:
    long_field = json.dumps({"model": "faulty/ok", "messages": HI, "k" * 200_000: 1}).encode()
    err = assert_refused(post(faulty_gw, long_field))
    assert err["param"].startswith("kkkk") and len(err["param"]) < 100
    long_model = json.dumps({"model": "m" * 200_000, "messages": HI}).encode()
    err = assert_refused(post(faulty_gw, long_model))
    assert err["code"] == "model_not_found" and len(err["message"]) < 300


@pytest.mark.parametrize("ctype", [None, "text/plain", "text/plain;charset=UTF-8",
                                   "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_body_a_web_page_could_send_is_refused_unread(faulty: FaultyServer, faulty_gw: GatewayThread,
                                                        ctype: str | None) -> None:
    """What a page can make a browser send without a preflight (a "simple" request: text/plain,
    a form, a Blob without a type) is refused before it is read: nothing reaches the upstream
    (with allow_anonymous, a page could otherwise spend the budget)."""
    headers = {"Authorization": f"Bearer {TEAM_KEY}"} | ({"Content-Type": ctype} if ctype else {})
    body = json.dumps({"model": "faulty/ok", "messages": HI}).encode()
    before = faulty.requests
    err = assert_refused(post(faulty_gw, body, headers))
    assert err["code"] == "unsupported_media_type" and err["param"] == "content-type"
    assert faulty.requests == before
    for ok in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        r = post(faulty_gw, body, {"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": ok})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions/"), ("POST", "/chat/completions/"),
                                            ("GET", "/health/"), ("GET", "/metrics/"), ("GET", "/models/")])
def test_a_trailing_slash_is_an_unknown_url_never_a_redirect(faulty_gw: GatewayThread, method: str,
                                                             path: str) -> None:
    """Starlette answered a 307 with an empty body to the same path on the request's Host
    header (Host: evil.example -> Location: http://evil.example/...): OpenAI's 404 JSON now."""
    r = httpx.request(method, faulty_gw.base_url.removesuffix("/v1") + path, timeout=30,
                      headers={**AUTH, "Host": "evil.example"}, json={"model": "faulty/ok", "messages": HI})
    secret_scanner.collect(r.text, *(f"{k}: {v}" for k, v in r.headers.items()))
    assert "location" not in r.headers
    err = assert_refused(r)
    assert r.status_code == 404 and err["code"] in ("unknown_url", "model_not_found"), r.text


def test_a_405_never_echoes_a_path_with_a_parameter(faulty_gw: GatewayThread) -> None:
    """``POST /v1/models/<id>``: the id is in the path, where a client may have pasted a key
    the gateway cannot know to redact (its GET and the 404 already hid it; the 405 quoted it)."""
    pasted = "sk-pasted-into-the-path-7c1e9a"
    r = httpx.post(faulty_gw.base_url + "/models/" + pasted, headers=AUTH, timeout=30)
    secret_scanner.collect(r.text, *(f"{k}: {v}" for k, v in r.headers.items()))
    assert r.status_code == 405 and pasted not in r.text and "pasted" not in r.text, r.text
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(faulty_gw.base_url + "/chat/completions", headers=AUTH, timeout=30)
    assert r.json()["error"]["message"] == "Method GET is not allowed on /v1/chat/completions"


def raw_http(port: int, head: bytes, body: bytes = b"", *, read: bool = True, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body)
        if not read:
            return b""
        s.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from([b"X-Squirrel-Max-Cost", b"X-Squirrel-Max-Latency-Ms", b"Authorization"]),
       value=st.binary(min_size=0, max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
       | st.sampled_from([b"NaN", b"-0", b"1e999999999", b"1E-99999999999", b"inf", b"1_0", b"\xe9",
                          b"9" * 5000, b"0x10", b"  1  ", b"Bearer", b"Bearer \xff\xfe"]))
def test_garbage_headers_get_a_json_answer(faulty_gw: GatewayThread, name: bytes, value: bytes) -> None:
    body = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 4}).encode()
    head = request_head(faulty_gw.port, body, name + b": " + value + b"\r\n")
    if name == b"Authorization":  # replace the good key
        head = head.replace(b"Authorization: Bearer " + TEAM_KEY.encode() + b"\r\n", b"", 1)
    data = raw_http(faulty_gw.port, head, body)
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    assert status < 500, data[:300]
    parsed = json.loads(payload)
    assert status == 200 or set(parsed["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("name", "value", "problem"), [
    (b"X-Squirrel-Max-Cost", b"1_000", "holds an underscore"),
    (b"X-Squirrel-Max-Cost", "\uff11\uff12".encode(), "bytes that are not ASCII"),
    (b"X-Squirrel-Max-Cost", b"sNaN", "is not a finite number"),
    (b"X-Squirrel-Max-Cost", b"Infinity", "is not a finite number"),
    (b"X-Squirrel-Max-Cost", b"+1", "has a + sign"),
    (b"X-Squirrel-Max-Cost", b"1e2", "has an exponent"),
    (b"X-Squirrel-Max-Latency-Ms", b"1_000", "holds an underscore"),
    (b"X-Squirrel-Max-Latency-Ms", b"1e3", "has an exponent"),
])
def test_limit_headers_are_plain_decimal_numbers(faulty_gw: GatewayThread, name: bytes, value: bytes,
                                                 problem: str) -> None:
    """``X-Squirrel-Max-Cost: 1_000`` was read as 1000 USD (``Decimal`` takes underscores),
    ``sNaN`` and the like only by luck refused: a limit header is a plain ASCII decimal
    number, and anything else a 400 naming the header and what is wrong with the value."""
    body = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 4}).encode()
    data = raw_http(faulty_gw.port, request_head(faulty_gw.port, body, name + b": " + value + b"\r\n"), body)
    assert int(data.split(b" ", 2)[1]) == 400, data[:300]
    err = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["param"] == name.decode().lower() and problem in err["message"], err


@pytest.mark.parametrize("head", [b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
                                  b"GET /he alth HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\r\n\r\n",
                                  b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"],
                         ids=["nul-in-header", "space-in-path", "tls-hello", "two-lengths"])
def test_what_the_http_parser_refuses_is_a_400_in_openai_json(faulty_gw: GatewayThread, head: bytes) -> None:
    """uvicorn answered these with a plain-text 400, "Invalid HTTP request received.": the
    one answer of the gateway an OpenAI SDK could not read as an error body."""
    data = raw_http(faulty_gw.port, head)
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert (error["code"], error["type"]) == ("invalid_http_request", "invalid_request_error")


def test_an_upgrade_to_websocket_is_an_ordinary_request(faulty_gw: GatewayThread) -> None:
    """uvicorn handed such a connection to the websockets library, which answered an empty
    plain-text 403 on every path; the gateway serves no WebSocket: the route answers."""
    upgrade = (b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer " + TEAM_KEY.encode())
    data = raw_http(faulty_gw.port, b"GET /v1/models HTTP/1.1\r\n" + upgrade + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["object"] == "list"
    data = raw_http(faulty_gw.port, b"GET /v1/chat/completions HTTP/1.1\r\n" + upgrade + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 405 "), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "method_not_allowed"


_TEXT = st.text(max_size=6) | st.sampled_from(["", SURROGATE, "auto", "user", "json_object", "text",
                                                "function", "image_url", "https://x/a.png"])
_SCALAR = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=False) | _TEXT)
_JSON = st.recursive(_SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(_TEXT, c, max_size=3),
                     max_leaves=12)
_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
           "user", "response_format", "tools", "tool_choice", "metadata", "stream", "stream_options",
           "logprobs", "presence_penalty", "logit_bias", "nonsense"]
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | _JSON},
                                 optional={"content": _JSON, "name": _JSON, "tool_call_id": _JSON,
                                           "tool_calls": _JSON})
_BODY = st.fixed_dictionaries({"model": st.just("faulty/ok") | _JSON,
                               "messages": st.lists(_MESSAGE, max_size=2) | _JSON},
                              optional={f: _JSON for f in _FIELDS if f != "model"})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODY)
def test_fuzzed_bodies_end_in_an_answer_or_a_4xx_naming_the_field(faulty_gw: GatewayThread,
                                                                   body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()  # lone surrogates as \\ud800 escapes: what a client can send
    r = post(faulty_gw, raw)
    if r.status_code == 200:
        return
    err = assert_refused(r)
    if err["code"] == "invalid_value":
        assert err["param"], err


@pytest.mark.parametrize("route", ["chat", "models"])
@pytest.mark.parametrize("first", [TEAM_KEY, OTHER_KEY], ids=["team-a-first", "team-b-first"])
def test_a_second_authorization_header_is_refused_on_every_route(faulty: FaultyServer,
                                                                 faulty_gw: GatewayThread,
                                                                 route: str, first: str) -> None:
    """Two keys in two Authorization headers: the chat route took the last one and GET
    /v1/models the first, so one request was team-a's on one route and team-b's (limited to
    faulty/ok) on the other, and a proxy adding its own key could be overridden by a
    client's. A header the gateway reads is now refused when it comes twice, on every route."""
    second = OTHER_KEY if first == TEAM_KEY else TEAM_KEY
    hdrs = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}"),
            ("Content-Type", "application/json")]
    before = faulty.requests
    if route == "chat":
        body = json.dumps({"model": "faulty/tool-call", "messages": HI, "max_tokens": 4})
        r = httpx.post(faulty_gw.base_url + "/chat/completions", content=body, headers=hdrs, timeout=30)
    else:
        r = httpx.get(faulty_gw.base_url + "/models", headers=hdrs, timeout=30)
    secret_scanner.collect(r.text)
    assert r.status_code == 401, r.text
    err = assert_refused(r)
    assert err["code"] == "invalid_api_key" and err["param"] == "authorization"
    assert faulty.requests == before


@pytest.mark.parametrize("name", ["X-Squirrel-Max-Cost", "X-Squirrel-Max-Latency-Ms", "Content-Type"])
def test_a_limit_header_sent_twice_is_refused_naming_it(faulty: FaultyServer, faulty_gw: GatewayThread,
                                                        name: str) -> None:
    """``X-Squirrel-Max-Cost: 0.000001`` then ``: 100``: the last one counted, so a ceiling a
    client library or a proxy set was lifted by a second header. Refused, naming it."""
    values = {"Content-Type": ("text/plain", "application/json")}.get(name, ("0.000001", "100"))
    hdrs = [("Authorization", f"Bearer {TEAM_KEY}"), ("Content-Type", "application/json")]
    hdrs = [h for h in hdrs if h[0] != name] + [(name, v) for v in values]
    body = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 4})
    before = faulty.requests
    r = httpx.post(faulty_gw.base_url + "/chat/completions", content=body, headers=hdrs, timeout=30)
    secret_scanner.collect(r.text)
    assert r.status_code == 400, r.text
    err = assert_refused(r)
    assert err["param"] == name.lower() and err["code"] == "invalid_value"
    assert faulty.requests == before


# --- upstream answers that are not valid Unicode ---------------------------------------------

BAD_TEXT = "a\ud800b\udfff"
ANSWER = json.dumps({"id": "x", "object": "chat.completion", "model": "ok", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": BAD_TEXT}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
CHUNKS = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (
    {"id": "x", "object": "chat.completion.chunk", "model": "ok",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": BAD_TEXT}, "finish_reason": None}]},
    {"id": "x", "object": "chat.completion.chunk", "model": "ok",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})) + b"data: [DONE]\n\n"


def test_upstream_text_with_lone_surrogates_is_carried(openai_module: Any, faulty: FaultyServer,
                                                       faulty_gw: GatewayThread) -> None:
    """An upstream's ``"\\ud800"`` (valid JSON, not valid Unicode) made the gateway's answer a
    500 with a traceback (plain) or an "internal error" event (stream). It is now written
    with ASCII escapes: the client reads exactly what the upstream sent."""
    c = openai_module.OpenAI(base_url=faulty_gw.base_url, api_key=TEAM_KEY, max_retries=0, timeout=20)
    faulty.serve("ok", ANSWER)
    resp = c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8)
    assert resp.choices[0].message.content == BAD_TEXT
    faulty.serve("ok", CHUNKS, content_type="text/event-stream")
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8, stream=True)
                   if ch.choices)
    assert text == BAD_TEXT


# --- clients that hold a request: never send the body, never read the answer ----------------

@pytest.fixture
def short_gw(faulty: FaultyServer) -> Iterator[GatewayThread]:
    """A gateway with a 1 s deadline, a budget and a concurrency limit on the upstream."""
    cfg = faulty_config(faulty)
    cfg["timeout"] = 1.0
    cfg["rate_limits"] = {"limits": [{"scope": "provider:faulty", "max_concurrent": 4}]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
        with gateway(cfg) as thread:
            yield thread


def held(gw: GatewayThread) -> tuple[int, int, int]:
    """(requests in flight at the gateway, open budget reservations, rate-limit slots held)."""
    g = gw.app.state.gateway
    store = g.manager.limiter.store
    return g.in_flight, g.manager.budget_backend.open_reservations, sum(store._inflight.values())


def off_cpu(gw: GatewayThread) -> float:
    """Seconds the gateway's thread and this one have waited for a CPU so far (the kernel's
    count, :func:`runqueue_wait`): a difference of two readings is time a loaded machine took
    from a span, which a bound on the gateway does not owe."""
    return runqueue_wait(gw.thread.native_id) + runqueue_wait()


def wait_released(gw: GatewayThread, within: float) -> float:
    """Wait until nothing is held; fail past ``within`` seconds, less the time off the CPU."""
    start, queued = time.monotonic(), off_cpu(gw)
    while held(gw) != (0, 0, 0):
        assert time.monotonic() - start - (off_cpu(gw) - queued) < within, held(gw)
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_client_that_never_reads_the_stream_is_dropped_at_the_deadline(faulty: FaultyServer,
                                                                          short_gw: GatewayThread) -> None:
    """A stream larger than the socket buffers to a client that never reads: the gateway sat
    in ``send`` for ever after the deadline (in flight, holding the connection and the answer
    in memory) until the client went away. Now the request ends by its deadline plus
    SEND_GRACE: budget settled, rate-limit slot freed, nothing in flight."""
    big = "x" * 50_000
    event = b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": "ok", "choices": [
        {"index": 0, "delta": {"content": big}, "finish_reason": None}]}).encode() + b"\n\n"
    faulty.serve("ok", event * 300 + b"data: [DONE]\n\n", content_type="text/event-stream")
    body = json.dumps({"model": "faulty/ok", "messages": HI, "max_tokens": 8, "stream": True}).encode()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", short_gw.port))
        s.sendall(request_head(short_gw.port, body) + body)
        # The gateway takes the request when its thread gets the CPU: wait for that, not a
        # fixed time (a loaded machine can keep it off the CPU longer than any fixed sleep).
        start = time.monotonic()
        while held(short_gw)[0] != 1:
            assert time.monotonic() - start < 10.0, held(short_gw)
            time.sleep(0.01)
        queued = runqueue_wait(short_gw.thread.native_id)
        waited = wait_released(short_gw, within=10.0)
        # Deadline 1 s + grace 1 s, less nothing of the time the gateway's thread was kept
        # off the CPU by other processes (the kernel's count: stalls.runqueue_wait).
        assert waited - (runqueue_wait(short_gw.thread.native_id) - queued) < 3.0
    assert held(short_gw) == (0, 0, 0)


def test_a_body_that_never_arrives_is_a_408_at_the_deadline(short_gw: GatewayThread) -> None:
    body = json.dumps({"model": "faulty/ok", "messages": HI}).encode()
    start, queued = time.monotonic(), off_cpu(short_gw)
    data = raw_http(short_gw.port, request_head(short_gw.port, body, length=len(body) + 100), body)
    took = time.monotonic() - start
    stalled = off_cpu(short_gw) - queued
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and error["param"] == "body"
    # never before the deadline; after it by less than 1.5 s of time the machine gave the
    # two threads (time they waited for a CPU is not the gateway's to keep)
    assert took > 0.9 and took - stalled < 2.5, (took, stalled)
    wait_released(short_gw, within=1.0)


# --- secrets in what upstreams list ------------------------------------------------------------

def test_a_model_list_echoing_the_key_never_reaches_clients(canary_env: str) -> None:
    """An upstream whose GET /models lists its caller's key (whole, minus two characters,
    JSON-escaped): the ids were served verbatim by GET /v1/models and would be every
    answer's ``model`` and a metric label. Such models are left out at discovery."""
    from squirrel_models.testing.fake_server import FakeServer

    listed = ("ok", "leak-models.whole", "leak-models.minus2", "leak-models.json")
    with FakeServer(listed) as server:
        cfg = faulty_config(server)
        cfg["providers"][0].update(discover=True, models=[])
        cfg["budget"] = {"allow_unpriced": True}
        with gateway(cfg) as gw:
            models = httpx.get(gw.base_url + "/models", headers=AUTH, timeout=10)
            metrics = httpx.get(gw.base_url.removesuffix("/v1") + "/metrics", timeout=10)
            answer = httpx.post(gw.base_url + "/chat/completions", headers=AUTH, timeout=10,
                                json={"model": "auto", "messages": HI, "max_tokens": 4})
    texts = [models.text, metrics.text, answer.text, *answer.headers.values()]
    secret_scanner.collect(*texts)
    assert not secret_scanner.leaky(texts)
    assert [m["id"] for m in models.json()["data"]] == ["faulty/ok", "cheap", "auto"]  # cheap: an alias
    assert answer.status_code == 200 and answer.json()["model"] == "faulty/ok"


@pytest.mark.parametrize("name", ["n", "model", "temperature", "tools", "messages", ""])
def test_a_passthrough_of_a_field_the_router_reads_fails_at_start_up(faulty: FaultyServer, name: str) -> None:
    """It was accepted, then refused every request with a 400 that blamed the client."""
    from squirrel_models.errors import ConfigError
    from squirrel_models_gateway import build

    with pytest.raises(ConfigError) as info:
        build(faulty_config(faulty, passthrough=["logit_bias", name]))
    assert info.value.field == "gateway.passthrough[1]"


@pytest.mark.parametrize(("name", "why"), [
    ("service_tier", "priority"), ("best_of", "answers"), ("prediction", "predicted"), ("audio", "audio"),
    ("modalities", "audio"), ("web_search_options", "per call"), ("functions", "prompt tokens"),
    ("function_call", "prompt tokens"), ("models", "OpenRouter"), ("plugins", "OpenRouter")])
def test_a_passthrough_that_changes_the_price_fails_at_start_up(faulty: FaultyServer, name: str, why: str) -> None:
    """``passthrough = ["service_tier"]`` let any client choose priority pricing, billed upstream
    above the configured prices the budget reserved with: refused, naming the field and why."""
    from squirrel_models.errors import ConfigError
    from squirrel_models_gateway import build

    with pytest.raises(ConfigError, match=why) as info:
        build(faulty_config(faulty, passthrough=["logit_bias", name]))
    assert info.value.field == "gateway.passthrough[1]" and name in str(info.value)


def test_passthrough_fields_the_reservation_bounds_are_sent(faulty: FaultyServer, canary_env: str) -> None:
    # Reasoning tokens are output tokens, within the output cap sent; logprobs are not billed.
    names = ["reasoning_effort", "verbosity", "logprobs", "top_logprobs"]
    with gateway(faulty_config(faulty, passthrough=names)) as gw:
        r = httpx.post(gw.base_url + "/chat/completions", headers=AUTH, timeout=10, json={
            "model": "faulty/ok", "messages": HI, "max_tokens": 4, "reasoning_effort": "low",
            "verbosity": "low", "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    assert {k: faulty.payloads_seen[-1][k] for k in names} == {
        "reasoning_effort": "low", "verbosity": "low", "logprobs": True, "top_logprobs": 2}


# --- what `squirrel serve` prints --------------------------------------------------------------

def test_squirrel_serve_prints_no_key_whatever_its_upstream_echoes(tmp_path: Any) -> None:
    """The real command in its own process, at debug log level, serving an upstream that
    echoes its key in every place it can (error messages, types, codes, headers, reason
    phrases, stream events, its model list) and clients that present wrong, revoked and
    mangled virtual keys: everything the process prints (uvicorn's logs and ours, the
    start-up line, the shutdown), every answer, header and /metrics text goes through the
    scanner."""
    import os

    from squirrel_models.testing.fake_server import FakeServer, leak_behaviours

    leaks = leak_behaviours()
    with FakeServer(("ok", "leak-models.whole", "leak-models.json", "leak-models.basic")) as server:
        models = "".join(f'  {{ name = "{b}", context_window = 4096, max_output_tokens = 64, '
                         f'price = {{ input = "1", output = "1" }} }},\n' for b in leaks)
        (tmp_path / "squirrel.toml").write_text(f"""
timeout = 3.0
[fallback]
max_attempts = 1
[[providers]]
name = "listed"
type = "openai"
options = {{ base_url = "{server.base_url}", api_key_env = "{UPSTREAM_ENV}" }}
[[providers]]
name = "leaky"
type = "openai"
discover = false
options = {{ base_url = "{server.base_url}", api_key_env = "{UPSTREAM_ENV}" }}
models = [
{models}]
[budget]
allow_unpriced = true
[gateway]
port = 0
access_log = true
keys = [{{ name = "team", key_env = "SQUIRREL_TEST_ATTACK_KEY" }}]
""")
        env = {**os.environ, UPSTREAM_ENV: UPSTREAM_KEY, "SQUIRREL_TEST_ATTACK_KEY": TEAM_KEY,
               }
        texts: list[str] = []
        with squirrel_serve(tmp_path / "squirrel.toml", env, "-vv") as served:
            base = served.base
            for leak in leaks:
                for stream in (False, True):
                    r = httpx.post(base + "/v1/chat/completions", headers=AUTH, timeout=10, json={
                        "model": f"leaky/{leak}", "messages": HI, "max_tokens": 8, "stream": stream})
                    texts += [r.text, *(f"{k}: {v}" for k, v in r.headers.items())]
            for key in (TEAM_KEY[:-2], TEAM_KEY + "x", TEAM_KEY.upper(), f"x{TEAM_KEY}", UPSTREAM_KEY):
                r = httpx.post(base + "/v1/chat/completions", timeout=10, json={"model": "auto", "messages": HI},
                               headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                assert r.status_code == 401
                texts.append(r.text)
            texts += [httpx.get(base + "/v1/models", headers=AUTH, timeout=10).text,
                      httpx.get(base + "/metrics", timeout=10).text]
        out, proc = served.out, served.proc
        texts.append(out)
    secret_scanner.collect(*texts)
    leaked = secret_scanner.leaky(texts)
    assert not leaked, leaked[:3]
    assert "squirrel serve" in out and "shows a secret" in out  # it did print, and say why
    # Ctrl-C is the documented way to stop it: a clean exit, not click's "Aborted!" and 1
    assert proc.returncode == 0 and "Aborted" not in out, out[-500:]
