"""Against a misbehaving server: every failure maps to the right error, every request ends
within its deadline after a bounded number of attempts, and the API key never leaks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import httpx
import pytest
from squirrel_models import (
    AuthenticationError,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelCard,
    ModelError,
    ModelManager,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.faulty_server import PROMPT_TOKENS, FaultyServer
from ..support.faulty_suite import REQUEST, FaultyManagerSuite
from ..support.stalls import loop_stalls
from .conftest import CANARY, CANARY_ENV, through_the_session
from .mock import card

pytestmark = pytest.mark.anyio

TRANSPORTS = ["httpx", "auto"]  # auto: aiohttp under asyncio, httpx under trio
#: aiohttp's engine as on an aiohttp whose internals were not checked: through its session.
THROUGH_SESSION = "aiohttp through its session"


@pytest.fixture(params=[*TRANSPORTS, THROUGH_SESSION])
async def make(request: pytest.FixtureRequest, faulty: FaultyServer, canary_env: str, anyio_backend: str,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []
    transport = request.param
    if transport == THROUGH_SESSION:
        if anyio_backend != "asyncio":
            pytest.skip("aiohttp runs only under asyncio")
        through_the_session(monkeypatch)
        transport = "aiohttp"

    def build(**options: Any) -> OpenAIProvider:
        options.setdefault("timeout", 0.5)
        options.setdefault("base_url", faulty.base_url)
        p = OpenAIProvider("faulty", OpenAIOptions(api_key_env=CANARY_ENV,
                                                   discover=False, transport=transport, **options))
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


COMPLETE_ERRORS = [
    ("error:500", ServerError), ("error:503", ServerError), ("error:404", InvalidRequestError),
    ("error:422", InvalidRequestError), ("malformed", MalformedResponse), ("no-choices", MalformedResponse),
    ("context", ContextWindowExceeded), ("filter", ContentFiltered), ("filter-finish", ContentFiltered),
    ("auth", AuthenticationError), ("rate-limit:0.2", RateLimited), ("rate-reset:2", RateLimited),
    ("quota", RateLimited), ("reset", ProviderConnectionError), ("close", ProviderConnectionError),
    ("hang", ProviderTimeout),
]


@pytest.mark.parametrize(("behaviour", "kind"), COMPLETE_ERRORS)
async def test_complete_errors(make: Callable[..., OpenAIProvider], faulty: FaultyServer, behaviour: str,
                               kind: type[ModelError]) -> None:
    p = make()
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(kind) as info:
            await p.complete(card(behaviour, "faulty"), REQUEST)
        # What the loop was given of the wall time: off-CPU time on a busy machine is not ours.
        assert stalls.elapsed(t0) < 2.0, stalls
    assert faulty.requests == 1  # one attempt, no hidden retries
    e = info.value
    assert e.model_id == f"faulty/{behaviour}" and e.provider == "faulty"
    if behaviour.startswith("rate-limit"):
        assert e.retry_after == 0.2  # type: ignore[attr-defined]
    if behaviour.startswith("rate-reset"):
        assert e.retry_after == 2.0  # type: ignore[attr-defined]
    if behaviour == "quota":
        assert not e.retryable
    if behaviour == "context":
        assert (e.window, e.needed) == (2048, 5000)  # type: ignore[attr-defined]


async def test_complete_ok_and_discovery(make: Callable[..., OpenAIProvider], faulty: FaultyServer) -> None:
    p = make()
    p._discover = True
    cards = await p.list_models()
    assert [c.id for c in cards] == ["faulty/ok", "faulty/no-usage"]
    resp = await p.complete(cards[0], REQUEST)
    assert resp.usage.input_tokens == PROMPT_TOKENS and resp.usage.cached_tokens == 4
    assert faulty.headers_seen[-1]["authorization"] == f"Bearer {CANARY}"


@pytest.mark.parametrize("header", ["api-key", "x-goog-api-key"])
async def test_the_key_goes_in_the_configured_header(make: Callable[..., OpenAIProvider], faulty: FaultyServer,
                                                     header: str) -> None:
    # Azure OpenAI reads its key from api-key, Google's OpenAI endpoint from x-goog-api-key:
    # `headers` may not carry a key, so api_key_header is the only way to reach them.
    p = make(api_key_header=header)
    await p.complete(await _ok_card(p), REQUEST)
    seen = faulty.headers_seen[-1]
    assert seen[header] == CANARY
    assert "authorization" not in seen


async def test_cookies_an_upstream_sets_are_not_sent_back(make: Callable[..., OpenAIProvider],
                                                          faulty: FaultyServer) -> None:
    """One pool serves every caller of a provider: a cookie an upstream sets in answer to one
    request must not go out with the next one (a load balancer's or a bot filter's cookie
    would carry state from one caller to another). By host name: aiohttp's jar keeps no
    cookie of an IP address anyway."""
    p = make(base_url=faulty.base_url.replace("127.0.0.1", "localhost"))
    answer = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    faulty.serve("ok", answer, headers={"Set-Cookie": "__cf_bm=caller-one; Path=/; HttpOnly"})
    ok = card("ok", "faulty")
    assert (await p.complete(ok, REQUEST)).text == "hi"
    await p.complete(ok, REQUEST)
    async for _ in p.stream(ok, REQUEST):
        pass
    assert faulty.requests == 3
    assert [h.get("cookie") for h in faulty.headers_seen] == [None, None, None]


async def test_start_up_builds_the_tls_context_off_the_event_loop(make: Callable[..., OpenAIProvider],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS context (the CA bundle's load, tens of milliseconds) is built once, at
    start-up in a worker thread, not by the first request on the event loop, where it would
    stall every task; the engine the first request makes verifies with it, and so does every
    other provider of the process (one context per CA file: squirrel_models.proxies)."""
    from squirrel_models import proxies

    built: list[bool] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kw: Any) -> Any:
        built.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kw)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    monkeypatch.setattr(proxies, "_contexts", {})  # none made yet in this process
    p = make()
    await p.list_models()
    assert built == [False]
    await p.complete(card("ok", "faulty"), REQUEST)
    await p.complete(card("ok", "faulty"), REQUEST)
    other = make()
    await other.list_models()
    await other.complete(card("ok", "faulty"), REQUEST)
    assert built == [False]


async def _ok_card(p: OpenAIProvider) -> ModelCard:
    p._discover = True
    return (await p.list_models())[0]


STREAM_ERRORS = [
    ("truncate", MidStreamError), ("reset-stream", MidStreamError), ("hang-stream", MidStreamError),
    ("stream-error", MidStreamError), ("malformed-stream", MalformedResponse), ("error:500", ServerError),
    ("reset", ProviderConnectionError), ("hang", ProviderTimeout), ("rate-limit:1", RateLimited),
]


@pytest.mark.parametrize(("behaviour", "kind"), STREAM_ERRORS)
async def test_stream_errors(make: Callable[..., OpenAIProvider], faulty: FaultyServer, behaviour: str,
                             kind: type[ModelError]) -> None:
    p = make()
    got: list[str] = []
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(kind) as info:
            async for chunk in p.stream(card(behaviour, "faulty"), REQUEST):
                got.append(chunk.text)
        assert stalls.elapsed(t0) < 2.0, stalls
    e = info.value
    if isinstance(e, MidStreamError):
        assert got and e.partial_text == "".join(got)
        assert e.usage is not None and e.usage.output_tokens >= 1 and e.usage.source == "estimated"
    else:
        assert not got


async def test_stream_usage_reported_or_counted(make: Callable[..., OpenAIProvider]) -> None:
    p = make()
    chunks = [c async for c in p.stream(card("ok", "faulty"), REQUEST)]
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "reported"
    assert chunks[-1].usage.input_tokens == PROMPT_TOKENS
    chunks = [c async for c in p.stream(card("no-usage", "faulty"), REQUEST)]
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "estimated"
    slow = [c async for c in p.stream(card("trickle:0.05", "faulty"), REQUEST)]
    assert "".join(c.text for c in slow) == "".join(c.text for c in chunks)


@pytest.mark.parametrize("path", ["below", "through"], ids=["below the session", "through the session"])
async def test_connection_refused(canary_env: str, path: str, anyio_backend: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ..support.ports import closed_port

    if path == "through":
        if anyio_backend != "asyncio":
            pytest.skip("aiohttp runs only under asyncio")
        through_the_session(monkeypatch)
    for transport in TRANSPORTS:
        port = closed_port()
        p = OpenAIProvider("x", OpenAIOptions(base_url=f"http://127.0.0.1:{port}/v1", discover=False,
                                              transport=transport))  # type: ignore[arg-type]
        with pytest.raises(ProviderConnectionError) as info:
            await p.complete(card("m", "x"), REQUEST)
        assert f"(to 127.0.0.1:{port})" in str(info.value)  # which server did not answer
        with pytest.raises(ProviderConnectionError) as info:
            async for _ in p.stream(card("m", "x"), REQUEST):
                pass
        assert f"(to 127.0.0.1:{port})" in str(info.value)
        await p.aclose()


async def test_a_server_down_at_start_up_names_the_provider_and_the_way_out(canary_env: str) -> None:
    """No models configured, so they are listed from the server at start-up, and the server
    is not there: the error said "connection failed (to 127.0.0.1:P)" and nothing about which
    provider, which step or what to do. It names them now, and never the key."""
    from ..support.canary import leaks, texts_of
    from ..support.ports import closed_port

    for transport in TRANSPORTS:
        port = closed_port()
        cfg = {"providers": [{"name": "local", "type": "openai", "options": {
            "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": CANARY_ENV, "transport": transport}}]}
        with pytest.raises(ProviderConnectionError) as info:
            async with ModelManager(cfg):
                pass
        message = str(info.value)
        assert message.startswith("provider 'local' (providers[0]): listing its models at start-up failed: "
                                  "connection failed"), message
        assert f"(to 127.0.0.1:{port}); start its server" in message
        assert "list its models under [[providers.models]] and set discover = false" in message
        assert not leaks(texts_of(info.value), CANARY)


# --- through ModelManager, and the canary key -----------------------------------------------


class TestThroughManager(FaultyManagerSuite):
    provider_type = "openai"
    key_option, key_env, key = "api_key_env", CANARY_ENV, CANARY
    provider_entry: ClassVar[dict[str, Any]] = {"discover": False}


@pytest.mark.parametrize("transport", ["auto", "aiohttp", "httpx"])
async def test_transport_name_is_the_engine_in_use(faulty: FaultyServer, canary_env: str,
                                                   anyio_backend: str, transport: str) -> None:
    """``transport_name`` names the engine that carries the requests, before the first call
    (a manager with ``discover = false`` makes none at start-up) as after it."""
    if transport == "aiohttp" and anyio_backend == "trio":
        pytest.skip("aiohttp runs only under asyncio")
    expected = "aiohttp" if transport != "httpx" and anyio_backend == "asyncio" else "httpx"
    p = OpenAIProvider("faulty", OpenAIOptions(base_url=faulty.base_url, api_key_env=CANARY_ENV,
                                               discover=False, transport=transport))  # type: ignore[arg-type]
    try:
        assert p.transport_name == expected
        await p.complete(card("ok", "faulty"), REQUEST)
        assert p.transport_name == expected
        assert p._client is not None and p._client.name == expected
    finally:
        await p.aclose()
