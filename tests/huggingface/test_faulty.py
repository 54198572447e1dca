"""Against a misbehaving server, through huggingface_hub's client: every failure maps to the right
error, every request ends within its deadline after a bounded number of attempts, and the token
never leaks."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

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
    ModelOverride,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.faulty_server import PROMPT_TOKENS, FaultyServer
from ..support.faulty_suite import REQUEST, FaultyManagerSuite
from ..support.stalls import loop_stalls
from .conftest import CANARY, CANARY_ENV

pytestmark = pytest.mark.anyio



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
    ("error:500", ServerError), ("error:502", ServerError), ("error:503", ServerError),
    ("error:504", ServerError), ("error:404", InvalidRequestError),
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
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(kind) as info:
            await p.complete(card(behaviour), REQUEST)
        # What the loop was given of the wall time: off-CPU time on a busy machine is not ours.
        assert stalls.elapsed(t0) < 2.0, stalls
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
    if behaviour in ("malformed", "no-choices", "error:504"):
        # an answer that came but could not be read, a gateway that gave up waiting: the
        # provider may bill it, so the core charges it by [budget] charge_unanswered
        assert e.sent is True
    elif e.status_code is not None:
        assert not e.sent  # an error answer: refused, nothing generated


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
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(kind) as info:
            async for chunk in p.stream(card(behaviour), REQUEST):
                got.append(chunk.text)
        assert stalls.elapsed(t0) < 2.0, stalls
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


SHAPES = [
    {"choices": {"0": {"message": {"content": "x"}}}},  # an object, not a list
    {"choices": 1},
    {"choices": ["x"]},
    {"choices": [{"message": {"content": [{"type": "text", "text": 5}]}, "finish_reason": "stop"}]},
    {"choices": [{"message": {"content": "x"}, "finish_reason": 3}]},
    {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": "lots"},
    [1, 2],
]


@pytest.mark.parametrize("body", [*(json.dumps(b).encode() for b in SHAPES), b"[" * 100_000, b"1" * 5000])
async def test_complete_answer_of_the_wrong_shape_is_malformed(make: Callable[..., HuggingFaceProvider],
                                                               faulty: FaultyServer, body: bytes) -> None:
    faulty.serve("shape", body)
    with pytest.raises(MalformedResponse):
        await make().complete(card("shape"), REQUEST)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("status", "error"), [(400, InvalidRequestError), (429, RateLimited),
                                               (500, ServerError), (503, ServerError),
                                               (407, ProviderConnectionError)])
@pytest.mark.parametrize("body", [b"null", b"[1]", b"3", b'"busy"', b'{"errors": 5}'])
async def test_an_error_answer_of_any_json_maps_by_its_status(make: Callable[..., HuggingFaceProvider],
                                                              faulty: FaultyServer, body: bytes, status: int,
                                                              error: type[ModelError], stream: bool) -> None:
    """huggingface_hub reads an error answer's JSON as an object: ``null``, a list, a number
    or a string escaped as its AttributeError (no ModelError at all), and ``{"errors": 5}`` as
    an InvalidRequestError "the client refused the request" whatever the status (a 500 not
    retried, a 429 not waited for). Found by fuzzing the server's answers."""
    faulty.serve("shape", body, status=status)
    with pytest.raises(error) as info:
        if stream:
            async for _ in make().stream(card("shape"), REQUEST):
                pass
        else:
            await make().complete(card("shape"), REQUEST)
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("event", [
    {"choices": {"index": 0, "delta": {"content": "x"}}}, {"choices": 3}, [1],
    {"choices": [{"delta": {"content": [{"type": "text", "text": 3}]}}]},
    {"choices": [{"delta": {"content": "x"}, "finish_reason": {"r": 1}}]},
])
async def test_stream_chunk_of_the_wrong_shape_is_malformed(make: Callable[..., HuggingFaceProvider],
                                                            faulty: FaultyServer, event: Any) -> None:
    faulty.serve("shape", f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode(),
                 content_type="text/event-stream")
    with pytest.raises(MalformedResponse):
        async for _ in make().stream(card("shape"), REQUEST):
            pass


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
    from ..support.ports import closed_port

    p = HuggingFaceProvider("x", HuggingFaceOptions(base_url=f"http://127.0.0.1:{closed_port()}/v1"),
                            models=[ModelOverride("m")])
    with pytest.raises(ProviderConnectionError):
        await p.complete(card("m"), REQUEST)
    with pytest.raises(ProviderConnectionError):
        async for _ in p.stream(card("m"), REQUEST):
            pass
    await p.aclose()


# --- through ModelManager, and the canary key -----------------------------------------------


class TestThroughManager(FaultyManagerSuite):
    provider_type = "huggingface"
    key_option, key_env, key = "token_env", CANARY_ENV, CANARY
