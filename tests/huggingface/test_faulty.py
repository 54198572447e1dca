"""Against a misbehaving server, through huggingface_hub's client: every failure maps to the right
error, every request ends within its deadline after a bounded number of attempts, and the token
never leaks."""

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
    ModelCard,
    ModelError,
    ModelOverride,
    ModelRequirements,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    SquirrelError,
)
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.faulty_server import PROMPT_TOKENS, FaultyServer
from .conftest import CANARY, CANARY_ENV

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)


def card(model: str) -> ModelCard:
    return ModelCard.for_provider("faulty", model, provider_type="huggingface")


@pytest.fixture
async def make(faulty: FaultyServer, canary_env: str) -> AsyncIterator[Callable[..., HuggingFaceProvider]]:
    from huggingface_hub import AsyncInferenceClient  # noqa: F401  (import once, outside the timed calls)

    made: list[HuggingFaceProvider] = []

    def build(**options: Any) -> HuggingFaceProvider:
        options.setdefault("timeout", 0.5)
        p = HuggingFaceProvider("faulty", HuggingFaceOptions(base_url=faulty.base_url, token_env=CANARY_ENV,
                                                             **options), models=[ModelOverride("ok")])
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


COMPLETE_ERRORS = [
    ("error:500", ServerError), ("error:503", ServerError), ("error:404", InvalidRequestError),
    ("error:422", InvalidRequestError), ("error:400", InvalidRequestError), ("error:403", AuthenticationError),
    ("malformed", MalformedResponse), ("no-choices", MalformedResponse),
    ("context", ContextWindowExceeded), ("filter", ContentFiltered), ("filter-finish", ContentFiltered),
    ("auth", AuthenticationError), ("rate-limit:0.2", RateLimited), ("rate-reset:2", RateLimited),
    ("quota", RateLimited), ("reset", ProviderConnectionError), ("close", ProviderConnectionError),
    ("hang", ProviderTimeout),
]


@pytest.mark.parametrize(("behaviour", "kind"), COMPLETE_ERRORS)
async def test_complete_errors(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, behaviour: str,
                               kind: type[ModelError]) -> None:
    p = make()
    t0 = time.monotonic()
    with pytest.raises(kind) as info:
        await p.complete(card(behaviour), REQUEST)
    assert time.monotonic() - t0 < 2.0
    assert faulty.requests == 1  # one attempt, no hidden retries
    e = info.value
    assert type(e) is kind
    assert e.model_id == f"faulty/{behaviour}" and e.provider == "faulty"
    if behaviour not in ("no-choices", "filter-finish"):  # those are our own findings
        assert e.__cause__ is not None  # raise ... from the client's exception
    if behaviour.startswith("rate-limit"):
        assert e.retry_after == 0.2  # type: ignore[attr-defined]
    if behaviour.startswith("rate-reset"):
        assert e.retry_after == 2.0  # type: ignore[attr-defined]
    if behaviour == "quota":
        assert not e.retryable
    if behaviour == "context":
        assert (e.window, e.needed) == (2048, 5000)  # type: ignore[attr-defined]
    if ":" in behaviour and behaviour.startswith("error"):
        assert e.status_code == int(behaviour.split(":")[1])


async def test_complete_reports_usage_and_sends_the_token(make: Callable[..., HuggingFaceProvider],
                                                          faulty: FaultyServer) -> None:
    p = make()
    (ok,) = await p.list_models()
    resp = await p.complete(ok, REQUEST)
    assert resp.text.startswith("Hello from the faulty server")
    assert resp.usage.source == "reported"
    assert (resp.usage.input_tokens, resp.usage.cached_tokens) == (PROMPT_TOKENS, 4)
    assert faulty.headers_seen[-1]["authorization"] == f"Bearer {CANARY}"
    resp = await p.complete(card("no-usage"), REQUEST)
    assert resp.usage.source == "estimated" and resp.usage.output_tokens <= 16


STREAM_ERRORS = [
    ("truncate", MidStreamError), ("reset-stream", MidStreamError), ("hang-stream", MidStreamError),
    ("stream-error", MidStreamError), ("malformed-stream", MalformedResponse), ("error:500", ServerError),
    ("reset", ProviderConnectionError), ("hang", ProviderTimeout), ("rate-limit:1", RateLimited),
    ("context", ContextWindowExceeded), ("auth", AuthenticationError),
]


@pytest.mark.parametrize(("behaviour", "kind"), STREAM_ERRORS)
async def test_stream_errors(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, behaviour: str,
                             kind: type[ModelError]) -> None:
    p = make()
    got: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(kind) as info:
        async for chunk in p.stream(card(behaviour), REQUEST):
            got.append(chunk.text)
    assert time.monotonic() - t0 < 2.0
    assert faulty.requests == 1
    e = info.value
    if isinstance(e, MidStreamError):
        assert got and e.partial_text == "".join(got)
        assert e.usage is not None and e.usage.output_tokens >= 1 and e.usage.source == "estimated"
    else:
        assert not "".join(got)
    if behaviour == "rate-limit:1":
        assert e.retry_after == 1.0  # type: ignore[attr-defined]
    if behaviour == "context":
        assert e.window == 2048  # type: ignore[attr-defined]  (the error body was read)


async def test_stream_usage_reported_or_estimated(make: Callable[..., HuggingFaceProvider]) -> None:
    p = make()
    chunks = [c async for c in p.stream(card("ok"), REQUEST)]
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "reported"
    assert chunks[-1].usage.input_tokens == PROMPT_TOKENS and chunks[-1].finish_reason == "stop"
    chunks = [c async for c in p.stream(card("no-usage"), REQUEST)]
    text = "".join(c.text for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "estimated"
    assert chunks[-1].usage.output_tokens == min(len(text.encode()), 16)
    slow = [c async for c in p.stream(card("trickle:0.05"), REQUEST)]
    assert "".join(c.text for c in slow) == text


async def test_streams_release_their_connections(make: Callable[..., HuggingFaceProvider],
                                                 faulty: FaultyServer) -> None:
    """huggingface_hub keeps a streamed response open until its client closes: each stream has
    a client of its own, closed at the end, also when the stream is abandoned early."""
    import anyio

    p = make()
    for _ in range(5):
        async for _chunk in p.stream(card("ok"), REQUEST):
            pass
    it = p.stream(card("trickle:0.2"), REQUEST).__aiter__()
    await it.__anext__()
    await it.aclose()  # type: ignore[attr-defined]
    with anyio.fail_after(2):
        while faulty.open_connections:
            await anyio.sleep(0.02)


async def test_connection_refused(canary_env: str) -> None:
    from ..support.llama_server import free_port

    p = HuggingFaceProvider("x", HuggingFaceOptions(base_url=f"http://127.0.0.1:{free_port()}/v1"),
                            models=[ModelOverride("m")])
    with pytest.raises(ProviderConnectionError):
        await p.complete(card("m"), REQUEST)
    with pytest.raises(ProviderConnectionError):
        async for _ in p.stream(card("m"), REQUEST):
            pass
    await p.aclose()


# --- through ModelManager ----------------------------------------------------------------


def config(server: FaultyServer, *models: str, max_attempts: int = 3, timeout: float = 5.0,
           provider_timeout: float = 0.5, **extra: Any) -> dict[str, Any]:
    """Models are priced in the given order (cheapest first), so they are tried in it."""
    return {"providers": [{"name": "faulty", "type": "huggingface",
                           "options": {"base_url": server.base_url, "token_env": CANARY_ENV,
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
        with pytest.raises(DeadlineExceeded):
            async with mm.stream(REQUEST) as s:
                async for _ in s:
                    pass
    assert time.monotonic() - t0 < 2.5
    assert faulty.requests == 2


async def test_rate_limit_storm_honours_retry_after(squirrel_manager: Any, faulty: FaultyServer,
                                                    canary_env: str) -> None:
    t0 = time.monotonic()
    async with squirrel_manager(config(faulty, "rate-limit:0.3", max_attempts=3, timeout=5.0)) as mm:
        with pytest.raises((FallbackExhausted, RateLimited)) as info:
            await mm.complete(REQUEST)
    elapsed = time.monotonic() - t0
    assert 2 <= faulty.requests <= 3
    assert elapsed >= 0.3 * (faulty.requests - 1) - 0.02
    errors = info.value.errors if isinstance(info.value, FallbackExhausted) else [info.value]
    assert all(isinstance(e, RateLimited) and e.retry_after == 0.3 for e in errors)


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
    assert faulty.requests == 1


# --- the canary token --------------------------------------------------------------------

LEAK_BEHAVIOURS = ["auth", "echo", "error:500", "error:400", "rate-limit:0.01", "malformed", "reset", "close",
                   "hang", "truncate", "reset-stream", "stream-error", "malformed-stream", "context", "filter"]


def _texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))] + [
        f"{a!r} {a.error!s}" for a in getattr(exc, "attempts", ())]


async def test_canary_token_never_leaks(squirrel_manager: Any, squirrel_metrics: Any, faulty: FaultyServer,
                                        canary_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with squirrel_manager(config(faulty, *LEAK_BEHAVIOURS, max_attempts=2, timeout=3.0,
                                       provider_timeout=0.3)) as mm:
        texts.append(repr(mm.providers) + repr(list(mm.models.values())))
        for b in LEAK_BEHAVIOURS:
            req = AIRequest.from_prompt("hi", max_tokens=8)
            pin = ModelRequirements(models={f"faulty/{b}"})
            try:
                await mm.complete(req, pin)
            except SquirrelError as exc:
                texts += _texts(exc)
            try:
                async with mm.stream(req, pin) as s:
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
