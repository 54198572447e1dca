"""Unit tests over httpx.MockTransport: request bodies, usage, streams and error mapping."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    Price,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    Usage,
)
from squirrel_models_openai import parse_usage
from squirrel_models_openai._errors import UpstreamError, to_model_error
from squirrel_models_openai._tokens import count_request, count_text

from .mock import (
    REQUEST,
    BrokenStream,
    card,
    completion,
    delta,
    json_response,
    provider,
    sse,
    stream_response,
    usage_event,
)

pytestmark = pytest.mark.anyio

FULL_USAGE = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
              "prompt_tokens_details": {"cached_tokens": 60},
              "completion_tokens_details": {"reasoning_tokens": 25}}


# --- usage -------------------------------------------------------------------------------


def test_usage_is_parsed_without_double_counting() -> None:
    u = parse_usage(FULL_USAGE)
    assert u == Usage(100, 40, 60, 25, "reported")
    price = Price("2", "8", "0.5")
    # 40 uncached + 60 cached inputs, 40 outputs (reasoning inside): each token charged once
    assert price.cost(u) == (40 * 2 + 60 * Decimal("0.5") + 40 * 8) / Decimal(1_000_000)


def test_usage_counted_apart_is_added() -> None:
    u = parse_usage({"prompt_tokens": 10, "completion_tokens": 5,
                     "completion_tokens_details": {"reasoning_tokens": 20}})
    assert (u.output_tokens, u.reasoning_tokens) == (25, 20)


def test_bad_usage_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        parse_usage({"prompt_tokens": "many"})
    assert parse_usage(None) is None


@pytest.mark.parametrize("bad", [1e30, -1, True, 2**31, 12.5, [3], {"n": 1}])
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_absurd_usage_is_malformed(field: str, bad: Any) -> None:
    # issue 12: 1e30 completion tokens reached the budget (SQLite raised a raw ValueError and
    # left the reservation open; the memory backend committed $2e24).
    with pytest.raises(MalformedResponse):
        parse_usage({"prompt_tokens": 10, "completion_tokens": 5, field: bad})


@pytest.mark.parametrize("stream", [False, True])
async def test_absurd_usage_fails_the_attempt_and_closes_its_reservation(stream: bool) -> None:
    from squirrel_models import ModelManager
    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

    usage = {"prompt_tokens": 10, "completion_tokens": 1e30}
    body = (stream_response(sse(delta("Hi"), usage_event(usage))) if stream
            else json_response(completion("Hi", usage)))
    p = provider(lambda r: body)
    backend = MemoryBudgetBackend()
    priced = attrs.evolve(card(), price=Price("2", "8"))
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "1"}]},
           "fallback": {"max_attempts": 1}}
    async with ModelManager(cfg, budget_backend=backend) as mm:
        mm.register_model(priced, p)
        req = AIRequest.from_prompt("hi", max_tokens=8)
        with pytest.raises((MalformedResponse, MidStreamError)):
            if stream:
                async with mm.stream(req) as s:
                    async for _ in s:
                        pass
            else:
                await mm.complete(req)
        (u,) = await mm.tokens.check_budget(priced)
    assert backend.open_reservations == 0 and u.reserved == 0
    assert u.committed <= Decimal("0.001")  # never the $2e24 the absurd count would cost


# --- non-streaming -----------------------------------------------------------------------


async def test_complete_sends_the_request_and_parses_the_answer(canary_env: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(completion("Hi there", FULL_USAGE))

    p = provider(handler, api_key_env=canary_env, extra_body={"top_p": 0.5},
                 max_tokens_field="max_completion_tokens", organization="org-1")
    resp = await p.complete(card(), REQUEST)
    assert (resp.text, resp.finish_reason, resp.raw_model) == ("Hi there", "stop", "gpt-4o-mini")
    assert resp.usage == Usage(100, 40, 60, 25, "reported")
    (req,) = seen
    body = json.loads(req.content)
    assert body == {"top_p": 0.5, "model": "gpt-4o-mini", "max_completion_tokens": 16,
                    "messages": [{"role": "user", "content": "Say hello."}]}
    assert str(req.url) == "http://upstream.test/v1/chat/completions"
    from .conftest import CANARY

    assert req.headers["authorization"] == f"Bearer {CANARY}"
    assert req.headers["openai-organization"] == "org-1"
    assert CANARY not in req.content.decode() + str(req.url)


async def test_content_parts_are_joined() -> None:
    body = completion(usage=FULL_USAGE)
    body["choices"][0]["message"]["content"] = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    p = provider(lambda r: json_response(body))
    assert (await p.complete(card(), REQUEST)).text == "ab"


async def test_missing_usage_is_counted_exactly_for_openai_models() -> None:
    p = provider(lambda r: json_response(completion("Hello there!")))
    resp = await p.complete(card("gpt-4o-mini"), REQUEST)
    prompt = count_request("gpt-4o-mini", REQUEST)
    assert prompt is not None and prompt.exact
    assert resp.usage == Usage(prompt.tokens, count_text("gpt-4o-mini", "Hello there!").tokens,  # type: ignore[union-attr]
                               source="counted")


async def test_missing_usage_is_estimated_for_unknown_tokenizers() -> None:
    p = provider(lambda r: json_response(completion("Hello there!")))
    resp = await p.complete(card("smollm2"), REQUEST)
    assert resp.usage.source == "estimated"
    assert resp.usage.output_tokens == len(b"Hello there!")  # the byte upper bound


async def test_content_filter_finish_is_content_filtered_with_usage() -> None:
    p = provider(lambda r: json_response(completion("", FULL_USAGE, finish="content_filter")))
    with pytest.raises(ContentFiltered) as info:
        await p.complete(card(), REQUEST)
    assert info.value.usage.input_tokens == 100  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", json.dumps({"id": "x"}).encode(),
    json.dumps({"choices": [{"message": {"content": 3}}]}).encode(),
    json.dumps({"choices": {"0": {"message": {"content": "x"}}}}).encode(),  # an object, not a list
    json.dumps({"choices": 1}).encode(),
    json.dumps({"choices": [{"message": {"content": [{"type": "text", "text": None}, {"text": 5}]}}]}).encode(),
    json.dumps({"choices": [{"message": {"content": [7]}}]}).encode(),
    json.dumps({"choices": [{"message": {"content": "x"}, "finish_reason": {"why": 1}}]}).encode(),
    b"[" * 100_000,  # nested too deeply for the JSON parser
    b'{"choices": ' + b"1" * 5000 + b"}",  # a number too long to read
    b"\xff\xfe not utf-8",
])
async def test_malformed_bodies(body: bytes) -> None:
    p = provider(lambda r: httpx.Response(200, content=body))
    with pytest.raises(MalformedResponse) as info:
        await p.complete(card(), REQUEST)
    assert info.value.model_id == "oa/gpt-4o-mini" and info.value.provider == "oa"


# --- errors ------------------------------------------------------------------------------


def err(message: str, etype: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


@pytest.mark.parametrize(("status", "body", "headers", "kind"), [
    (400, err("This model's maximum context length is 8192 tokens. However, your messages resulted in "
              "9000 tokens.", code="context_length_exceeded"), {}, ContextWindowExceeded),
    (400, err("Input is too long for the context window", code=None), {}, ContextWindowExceeded),
    (400, err("filtered", code="content_filter"), {}, ContentFiltered),
    (400, {"error": {"message": "x", "code": "content_filter",
                     "innererror": {"code": "ResponsibleAIPolicyViolation"}}}, {}, ContentFiltered),
    (429, err("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "3"}, RateLimited),
    (401, err("Incorrect API key provided: sk-ab***cd", code="invalid_api_key"), {}, AuthenticationError),
    (403, err("forbidden"), {}, AuthenticationError),
    (400, err("bad"), {}, InvalidRequestError),
    (404, err("no such model", code="model_not_found"), {}, InvalidRequestError),
    (422, {"detail": [{"msg": "field required"}]}, {}, InvalidRequestError),
    (408, err("timeout"), {}, ProviderTimeout),
    (500, err("boom", "server_error"), {}, ServerError),
    (503, "overloaded", {"retry-after": "2"}, ServerError),
])
async def test_status_mapping(status: int, body: Any, headers: dict[str, str], kind: type[ModelError]) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    p = provider(lambda r: httpx.Response(status, content=content, headers=headers))
    with pytest.raises(kind) as info:
        await p.complete(card(), REQUEST)
    e = info.value
    assert e.status_code == status and e.model_id == "oa/gpt-4o-mini"
    assert isinstance(e.__cause__, UpstreamError)
    if status in (401, 403):
        assert "sk-ab" not in str(e)  # upstream auth messages are not quoted
    if kind is ContextWindowExceeded and "8192" in content.decode():
        assert (e.window, e.needed) == (8192, 9000)  # type: ignore[attr-defined]
    if status == 429:
        assert e.retry_after == 3.0  # type: ignore[attr-defined]
    if status == 503:
        assert e.retry_after == 2.0  # type: ignore[attr-defined]


async def test_error_in_a_200_body() -> None:
    p = provider(lambda r: json_response(err("rate", "requests", "rate_limit_exceeded") | {}, 200))
    with pytest.raises(ServerError):
        await p.complete(card(), REQUEST)


async def test_insufficient_quota_is_not_retryable() -> None:
    p = provider(lambda r: json_response(err("quota", "insufficient_quota", "insufficient_quota"), 429))
    with pytest.raises(RateLimited) as info:
        await p.complete(card(), REQUEST)
    assert not info.value.retryable and info.value.retry_after is None


@pytest.mark.parametrize(("exc", "kind"), [
    (httpx.ConnectError("refused"), ProviderConnectionError),
    (httpx.ReadError("reset"), ProviderConnectionError),
    (httpx.RemoteProtocolError("closed"), ProviderConnectionError),
    (httpx.ReadTimeout("slow"), ProviderTimeout),
    (httpx.ConnectTimeout("slow"), ProviderTimeout),
    (httpx.PoolTimeout("full"), ProviderTimeout),
])
async def test_transport_errors(exc: Exception, kind: type[ModelError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(kind) as info:
        await provider(handler).complete(card(), REQUEST)
    # The client's exception, as a redacted stand-in of its class (its request, which holds
    # the key in its headers, stays behind: see squirrel_models.secrets.sanitize).
    cause = info.value.__cause__
    assert isinstance(cause, type(exc)) and str(cause) == str(exc) and not hasattr(cause, "_request")
    # which server, as host:port (issue 13), but never the URL with its path
    assert str(info.value).endswith("(to upstream.test:80)")
    assert "/v1" not in str(info.value) and "http" not in str(info.value)


def test_aiohttp_refusal_reported_as_connect_timeout_is_a_connection_error() -> None:
    class ClientConnectorError(OSError):  # stands in for aiohttp's, by module name
        __module__ = "aiohttp.client_exceptions"

    wrapped = httpx.ConnectTimeout("Cannot connect")
    wrapped.__cause__ = ClientConnectorError("refused")
    assert isinstance(to_model_error(wrapped), ProviderConnectionError)
    timed_out = httpx.ReadTimeout("x")
    timed_out.__cause__ = TimeoutError()
    assert isinstance(to_model_error(timed_out), ProviderTimeout)


# --- streaming ---------------------------------------------------------------------------


async def collect(p: Any, model: str = "gpt-4o-mini") -> list[Any]:
    return [c async for c in p.stream(card(model), REQUEST)]


async def test_stream_yields_text_then_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response(sse(delta(""), delta("Hel"), delta("lo"), delta(None, "stop"),
                                   usage_event(FULL_USAGE)))

    chunks = await collect(provider(handler))
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1].usage == Usage(100, 40, 60, 25, "reported")
    assert chunks[-1].finish_reason == "stop"
    body = json.loads(seen[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert seen[0].headers["accept"] == "text/event-stream"


async def test_streamed_cost_equals_unstreamed_cost() -> None:
    price = Price("2.5", "10", "1.25")
    text = "Hello"
    unstreamed = await provider(lambda r: json_response(completion(text, FULL_USAGE))).complete(card(), REQUEST)
    streamed = await collect(provider(lambda r: stream_response(
        sse(delta("Hel"), delta("lo", "stop"), usage_event(FULL_USAGE)))))
    assert "".join(c.text for c in streamed) == unstreamed.text
    assert price.cost(streamed[-1].usage) == price.cost(unstreamed.usage) > 0
    # and when the server reports nothing, both are counted the same way
    u1 = (await provider(lambda r: json_response(completion(text))).complete(card(), REQUEST)).usage
    s2 = await collect(provider(lambda r: stream_response(sse(delta("Hel"), delta("lo", "stop")))))
    assert s2[-1].usage == u1 and u1.source == "counted"


async def test_stream_without_usage_is_counted() -> None:
    chunks = await collect(provider(lambda r: stream_response(sse(delta("Hello"), delta(" world", "stop")))))
    prompt = count_request("gpt-4o-mini", REQUEST)
    assert prompt is not None
    assert chunks[-1].usage == Usage(prompt.tokens, 2, source="counted")
    chunks = await collect(provider(lambda r: stream_response(sse(delta("Hello"), delta(None, "stop")))),
                           "smollm2")
    assert chunks[-1].usage.source == "estimated"


async def test_stream_usage_can_be_switched_off() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return stream_response(sse(delta("x", "stop")))

    await collect(provider(handler, stream_usage=False))
    assert "stream_options" not in json.loads(seen[0])


async def test_stream_without_done_after_chunks_is_mid_stream_error() -> None:
    p = provider(lambda r: stream_response(sse(delta("Hel"), delta("lo"), done=False)))
    got: list[str] = []
    with pytest.raises(MidStreamError) as info:
        async for c in p.stream(card(), REQUEST):
            got.append(c.text)
    assert got == ["Hel", "lo"]
    e = info.value
    assert e.partial_text == "Hello" and e.usage is not None and e.usage.output_tokens == 1
    assert e.usage.source == "counted" and e.model_id == "oa/gpt-4o-mini"


async def test_stream_without_done_and_nothing_yielded_is_a_plain_model_error() -> None:
    p = provider(lambda r: stream_response(sse(delta(""), done=False)))
    with pytest.raises(ModelError) as info:
        await collect(p)
    assert not isinstance(info.value, MidStreamError)
    assert isinstance(info.value, ProviderConnectionError)


async def test_stream_reset_mid_body() -> None:
    body = BrokenStream([sse(delta("Hel"), done=False)], httpx.ReadError("connection reset"))
    p = provider(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body))
    with pytest.raises(MidStreamError) as info:
        await collect(p)
    assert isinstance(info.value.__cause__, ProviderConnectionError)
    assert info.value.partial_text == "Hel"
    body = BrokenStream([], httpx.ReadTimeout("no data"))
    p = provider(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body))
    with pytest.raises(ProviderTimeout):
        await collect(p)


async def test_stream_error_event() -> None:
    p = provider(lambda r: stream_response(sse(delta("Hel"), err("overloaded", "server_error"), done=False)))
    with pytest.raises(MidStreamError) as info:
        await collect(p)
    assert isinstance(info.value.__cause__, ServerError)
    p = provider(lambda r: stream_response(sse(err("slow down", "requests", "rate_limit_exceeded") | {})))
    with pytest.raises(ServerError):
        await collect(p)


async def test_stream_malformed_event() -> None:
    p = provider(lambda r: stream_response(sse("{not json")))
    with pytest.raises(MalformedResponse):
        await collect(p)


@pytest.mark.parametrize("event", [
    {"choices": {"index": 0, "delta": {"content": "x"}}},  # an object, not a list
    {"choices": 3},
    {"choices": [{"delta": {"content": [{"type": "text", "text": 3}]}}]},
    {"choices": [{"delta": {"content": {"text": "x"}}}]},
    {"choices": [{"delta": "x"}]},
    {"choices": [{"delta": {}, "finish_reason": 1}]},
    "[[[[" * 30_000,
])
async def test_stream_event_of_the_wrong_shape_is_malformed(event: Any) -> None:
    p = provider(lambda r: stream_response(sse(event)))
    with pytest.raises(MalformedResponse):
        await collect(p)


async def test_stream_answered_with_plain_json() -> None:
    p = provider(lambda r: json_response(completion("Hi", FULL_USAGE)))
    chunks = await collect(p)
    assert [c.text for c in chunks] == ["Hi", ""]
    assert chunks[-1].usage.input_tokens == 100


async def test_stream_error_status() -> None:
    p = provider(lambda r: json_response(err("slow", "requests", "rate_limit_exceeded"), 429,
                                         {"retry-after": "1"}))
    with pytest.raises(RateLimited) as info:
        await collect(p)
    assert info.value.retry_after == 1.0


async def test_stream_content_filtered_before_any_text() -> None:
    p = provider(lambda r: stream_response(sse(delta(""), delta(None, "content_filter"))))
    with pytest.raises(ContentFiltered):
        await collect(p)


async def test_events_split_across_reads_and_crlf() -> None:
    raw = sse(delta("Hel"), delta("lo", "stop")).replace(b"\n", b"\r\n")
    parts = [raw[i:i + 7] for i in range(0, len(raw), 7)]

    class Slow(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for p in parts:
                yield p

    p = provider(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Slow()))
    assert [c.text for c in await collect(p)] == ["Hel", "lo", ""]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_body_sent_is_the_same_with_or_without_msgspec(stream: bool) -> None:
    """With msgspec installed (the core's ``fast`` extra) the body of a plain request is
    encoded by it: the same JSON values as json's encoding, which the plugin keeps for
    requests with free-form fields (``extra``, tools, a response format)."""
    from squirrel_models import Message
    from squirrel_models.upstream import fast_dumps

    if fast_dumps() is None:
        pytest.skip("msgspec is not installed")
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return stream_response(sse(delta("x"))) if stream else json_response(completion())

    p = provider(handler)
    req = AIRequest([Message("system", "be brief"),
                     Message("user", "caf\u00e9 \"q\" \\ \n\u2028 \U0001f600 \u0000")],
                    max_tokens=12, temperature=0.5, stop=("\n\n",))
    for fast in (True, False):
        p._dumps = fast_dumps() if fast else None
        if stream:
            assert "".join([c.text async for c in p.stream(card(), req)]) == "x"
        else:
            await p.complete(card(), req)
    assert len(seen) == 2 and json.loads(seen[0]) == json.loads(seen[1])
    assert json.loads(seen[0])["messages"][1]["content"] == req.messages[1].content
