"""Against a misbehaving server: every failure maps to the right error, every request ends
within its deadline after a bounded number of attempts, and the API key never leaks."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    ContentFiltered,
    ContextWindowExceeded,
    DeadlineExceeded,
    FallbackExhausted,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    SquirrelError,
)
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.faulty_server import PROMPT_TOKENS, FaultyServer
from .conftest import CANARY, CANARY_ENV
from .mock import card

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
TRANSPORTS = ["httpx", "auto"]  # auto: aiohttp under asyncio, httpx under trio


@pytest.fixture(params=TRANSPORTS)
async def make(request: pytest.FixtureRequest, faulty: FaultyServer, canary_env: str
               ) -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def build(**options: Any) -> OpenAIProvider:
        options.setdefault("timeout", 0.5)
        p = OpenAIProvider("faulty", OpenAIOptions(base_url=faulty.base_url, api_key_env=CANARY_ENV,
                                                   discover=False, transport=request.param, **options))
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
    t0 = time.monotonic()
    with pytest.raises(kind) as info:
        await p.complete(card(behaviour, "faulty"), REQUEST)
    assert time.monotonic() - t0 < 2.0
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
    t0 = time.monotonic()
    with pytest.raises(kind) as info:
        async for chunk in p.stream(card(behaviour, "faulty"), REQUEST):
            got.append(chunk.text)
    assert time.monotonic() - t0 < 2.0
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


async def test_connection_refused(canary_env: str) -> None:
    from ..support.llama_server import free_port

    for transport in TRANSPORTS:
        p = OpenAIProvider("x", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}/v1", discover=False,
                                              transport=transport))  # type: ignore[arg-type]
        with pytest.raises(ProviderConnectionError):
            await p.complete(card("m", "x"), REQUEST)
        await p.aclose()


# --- through ModelManager ----------------------------------------------------------------


def config(server: FaultyServer, *models: str, max_attempts: int = 3, timeout: float = 5.0,
           provider_timeout: float = 0.5, **extra: Any) -> dict[str, Any]:
    """Models are priced in the given order (cheapest first), so they are tried in it."""
    return {"providers": [{"name": "faulty", "type": "openai", "discover": False,
                           "options": {"base_url": server.base_url, "api_key_env": CANARY_ENV,
                                       "timeout": provider_timeout},
                           "models": [{"name": m, "price": {"input": str(i + 1), "output": str(i + 1)}}
                                      for i, m in enumerate(models)]}],
            "fallback": {"max_attempts": max_attempts, "options": {"retry": {"base_delay": 0.01}}},
            "timeout": timeout, **extra}


@pytest.mark.parametrize("bad", ["hang", "reset", "error:500", "malformed", "close"])
async def test_fallback_to_a_working_model(squirrel_manager: Any, faulty: FaultyServer, canary_env: str,
                                           bad: str) -> None:
    t0 = time.monotonic()
    async with squirrel_manager(config(faulty, bad, "ok")) as mm:
        resp = await mm.complete(REQUEST)
    assert resp.model == "faulty/ok" and resp.text
    assert time.monotonic() - t0 < 3.0
    assert faulty.requests <= 3 and faulty.by_model["ok"] == 1
    assert [a.outcome for a in resp.attempts][-1] == "ok"


async def test_stream_falls_back_before_the_first_chunk(squirrel_manager: Any, faulty: FaultyServer,
                                                        canary_env: str) -> None:
    async with squirrel_manager(config(faulty, "reset", "ok")) as mm, mm.stream(REQUEST) as s:
        text = "".join([c.text async for c in s])
    assert s.response is not None and s.response.model == "faulty/ok" and text


async def test_hangs_end_within_the_deadline(squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    t0 = time.monotonic()
    async with squirrel_manager(config(faulty, "hang", max_attempts=10, timeout=1.0, provider_timeout=60)) as mm:
        with pytest.raises(DeadlineExceeded):
            await mm.complete(REQUEST)
    assert time.monotonic() - t0 < 1.5
    assert faulty.requests == 1


async def test_rate_limit_storm_honours_retry_after(squirrel_manager: Any, faulty: FaultyServer,
                                                    canary_env: str) -> None:
    t0 = time.monotonic()
    async with squirrel_manager(config(faulty, "rate-limit:0.3", max_attempts=3, timeout=5.0)) as mm:
        with pytest.raises((FallbackExhausted, RateLimited)) as info:
            await mm.complete(REQUEST)
    elapsed = time.monotonic() - t0
    assert 2 <= faulty.requests <= 3
    assert elapsed >= 0.3 * (faulty.requests - 1) - 0.02  # each retry waited for Retry-After
    errors = info.value.errors if isinstance(info.value, FallbackExhausted) else [info.value]
    assert all(isinstance(e, RateLimited) and e.retry_after == 0.3 for e in errors)


async def test_attempts_are_bounded(squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
    async with squirrel_manager(config(faulty, "error:500", "error:502", "error:503", "error:504",
                                       max_attempts=3)) as mm:
        with pytest.raises(FallbackExhausted) as info:
            await mm.complete(REQUEST)
    assert faulty.requests == 3 and len(info.value.errors) == 3


@pytest.mark.parametrize("bad", ["auth", "error:400", "error:404", "error:422", "context", "filter"])
async def test_hopeless_errors_are_not_retried(squirrel_manager: Any, faulty: FaultyServer, canary_env: str,
                                               bad: str) -> None:
    async with squirrel_manager(config(faulty, bad, max_attempts=3)) as mm:
        with pytest.raises(SquirrelError):
            await mm.complete(REQUEST)
    assert faulty.requests == 1


async def test_broken_stream_is_charged_for_what_arrived(squirrel_manager: Any, faulty: FaultyServer,
                                                         canary_env: str) -> None:
    cfg = config(faulty, "truncate", budget={"limits": [{"scope": "global", "limit": "1"}]})
    async with squirrel_manager(cfg) as mm:
        with pytest.raises(MidStreamError) as info:
            async with mm.stream(REQUEST) as s:
                async for _ in s:
                    pass
        (usage,) = await mm.tokens.check_budget(mm.models["faulty/truncate"])
    e = info.value
    assert e.partial_text and e.usage is not None and e.usage.output_tokens > 0
    assert usage.committed > 0 and usage.reserved == 0
    assert faulty.requests == 1  # never replayed


# --- the canary key ----------------------------------------------------------------------

LEAK_BEHAVIOURS = ["auth", "echo", "error:500", "error:400", "rate-limit:0.01", "malformed", "reset", "close",
                   "hang", "truncate", "reset-stream", "stream-error", "malformed-stream", "context", "filter"]


def _texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))] + [
        f"{a!r} {a.error!s}" for a in getattr(exc, "attempts", ())]


async def test_canary_key_never_leaks(squirrel_manager: Any, squirrel_metrics: Any, faulty: FaultyServer,
                                      canary_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with squirrel_manager(config(faulty, *LEAK_BEHAVIOURS, max_attempts=2, timeout=3.0,
                                       provider_timeout=0.3)) as mm:
        texts.append(repr(mm.providers) + repr(list(mm.models.values())))
        for b in LEAK_BEHAVIOURS:
            req = AIRequest.from_prompt("hi", max_tokens=8)
            pin = {"models": {f"faulty/{b}"}}
            from squirrel_models import ModelRequirements

            try:
                await mm.complete(req, ModelRequirements(**pin))
            except SquirrelError as exc:
                texts += _texts(exc)
            try:
                async with mm.stream(req, ModelRequirements(**pin)) as s:
                    async for _ in s:
                        pass
            except SquirrelError as exc:
                texts += _texts(exc)
    assert any(h.get("authorization") == "Bearer " + CANARY for h in faulty.headers_seen)  # it was sent
    assert len(texts) > 2 * len(LEAK_BEHAVIOURS)
    texts += [r.getMessage() for r in caplog.records]
    texts += [logging.Formatter().format(r) for r in caplog.records]
    texts.append(squirrel_metrics.everything())
    leaks = [t for t in texts if CANARY in t]
    assert not leaks, leaks[:1]
