"""A provider plugin that misbehaves as hypothesis draws, registered as a user registers a
third-party one (``PluginManager.register``): what each call to it returns, raises or yields
(a wrong type, junk usage, a foreign exception holding the API key or whose ``str()`` raises,
a ``BaseException`` subclass, a spurious cancellation, a ``ModelError`` with junk fields, a
stream that breaks, yields junk or never ends, cancellation ignored for a while, the event
loop blocked briefly). :func:`run_request` runs one request through a real ``ModelManager``
and checks the core's promises, whatever the plugin did."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import anyio
import attrs
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    Choice,
    ModelCard,
    ModelManager,
    Price,
    ProviderResponse,
    ProviderType,
    StreamChunk,
    ToolCall,
    Usage,
    hookimpl,
)
from squirrel_models import errors as e
from squirrel_models.errors import SquirrelError
from squirrel_models.plugins import PluginManager
from squirrel_models.ratelimit import UpstreamLimits
from squirrel_models.secrets import Secret

from . import secret_scanner

KEY = secret_scanner.canary("sk-mB7vQ2xR9tL4kW8nZ3pJ6yH1", "misbehaving plugin's key")
Secret(KEY)  # registered with the redaction point, as a provider's key is

TIMEOUT = 0.4  # the request's deadline
MAX_ATTEMPTS = 3
#: The most a drawn behaviour keeps the event loop or ignores cancellation: a request may
#: end that much after its deadline (a provider the core cannot preempt).
STUBBORN = 0.15
PRICE = Price(Decimal(1), Decimal(2))


class StrRaises(Exception):
    def __str__(self) -> str:
        raise ValueError("no message for you")


class Exotic(BaseException):
    """A library's own BaseException subclass (not a cancellation)."""


@attrs.frozen
class BuildUsage:
    """Build the answer's Usage from what the upstream said: junk (it raises MalformedResponse
    inside the provider's call, as a plugin's parsing of a real answer would)."""

    tokens: Any

    def build(self) -> ProviderResponse:
        return ProviderResponse("x", Usage(1, self.tokens))


def _model_error(cls: type[e.ModelError], **fields: Any) -> e.ModelError:
    err = cls("upstream failed") if cls is not e.ContextWindowExceeded else cls()
    for k, v in fields.items():
        if v is not attrs.NOTHING:  # (drawn: left as the class sets it)
            setattr(err, k, v)
    return err


@attrs.frozen
class BuildLimits:
    """Build the answer's UpstreamLimits from junk headers (it raises inside the call)."""

    fields: dict[str, Any]

    def build(self) -> ProviderResponse:
        return ProviderResponse("x", Usage(1, 1), rate_limits=UpstreamLimits(**self.fields))


JUNK_NUMBER = st.sampled_from([None, -1, 2.5, float("nan"), float("inf"), True, "5", 10**30,
                               Decimal("NaN"), Decimal("-1"), object()])
GOOD_USAGE = st.builds(Usage, st.integers(1, 50), st.integers(1, 50))

ANSWERS = st.one_of(
    st.builds(ProviderResponse, st.sampled_from(["fine", "", "other/model said so"]), GOOD_USAGE,
              raw_model=st.sampled_from([None, "another/model"])),
    st.sampled_from([None, {"text": "x"}, "text", 5, StreamChunk("x")]),
    st.builds(lambda t, u: ProviderResponse(t, u), st.sampled_from([None, 5, b"x"]), GOOD_USAGE),
    st.builds(lambda u: ProviderResponse("x", u), st.sampled_from([None, {"input_tokens": 1}, 7])),
    st.builds(BuildUsage, JUNK_NUMBER.filter(lambda n: n is not None)),
    st.builds(lambda f: ProviderResponse("x", Usage(1, 1), finish_reason=f), st.sampled_from([5, b"stop"])),
    st.builds(lambda c: ProviderResponse("x", Usage(1, 1), tool_calls=c),
              st.sampled_from(["abc", [1], (ToolCall("i", "n", 5),)])),  # type: ignore[arg-type]
    st.builds(lambda c: ProviderResponse("x", Usage(1, 1), choices=c),
              st.sampled_from([5, (1,), (Choice("0", "x"),)])),  # type: ignore[arg-type]
    st.builds(lambda r: ProviderResponse("x", Usage(1, 1), rate_limits=r), st.sampled_from([5, "x"])),
    st.builds(BuildLimits, st.sampled_from([{"requests_remaining": "x"}, {"retry_after": float("nan")},
                                            {"tokens_reset": -1.0}, {"tokens_limit": 2.5}])),
)

RAISED = st.one_of(
    st.sampled_from([lambda: RuntimeError(f"client closed, key {KEY}"), lambda: KeyError("choices"),
                     StrRaises, lambda: Exotic(f"stop {KEY}"), lambda: SystemExit(2),
                     lambda: BaseExceptionGroup("g", [Exotic("x")]),
                     lambda: ExceptionGroup("g", [ValueError(KEY)]), asyncio.CancelledError,
                     StopAsyncIteration, RecursionError]).map(lambda make: make()),
    st.builds(_model_error, st.sampled_from([e.ServerError, e.RateLimited, e.ProviderTimeout,
                                             e.MidStreamError, e.ContextWindowExceeded,
                                             e.InvalidRequestError, e.MalformedResponse]),
              **{k: st.one_of(st.just(attrs.NOTHING), JUNK_NUMBER) for k in
                 ("retry_after", "usage", "cost", "status_code", "sent", "retryable", "rate_limits",
                  "needed", "partial_text", "model_specific")}),
    st.builds(lambda m: _model_error(e.ServerError, model_id=m, provider="elsewhere"),
              st.sampled_from(["other/model", 5, None])),
)


@attrs.frozen
class Answer:
    value: Any


@attrs.frozen
class Raise:
    exc: BaseException


@attrs.frozen
class Stubborn:
    """Ignore cancellation for ``seconds`` (then go on with ``then``)."""

    seconds: float
    then: Any


@attrs.frozen
class Block:
    """Hold the event loop for ``seconds`` (then go on with ``then``)."""

    seconds: float
    then: Any


@attrs.frozen
class Hang:
    """Wait forever (cancellable)."""


CHUNKS = st.one_of(
    st.builds(StreamChunk, st.sampled_from(["a ", "b", ""])),
    st.builds(lambda u: StreamChunk("end", usage=u, finish_reason="stop"), GOOD_USAGE),
    st.sampled_from([None, "text", StreamChunk(None), StreamChunk(5), StreamChunk("x", usage=5),  # type: ignore[arg-type]
                     StreamChunk("x", tool_calls=[1]), StreamChunk("x", finish_reason=3),  # type: ignore[arg-type]
                     StreamChunk("x", rate_limits=7)]),  # type: ignore[arg-type]
)
STEPS = st.one_of(CHUNKS.map(Answer), RAISED.map(Raise),
                  st.builds(Stubborn, st.floats(0.01, STUBBORN), CHUNKS.map(Answer)),
                  st.just(Hang()))
#: What one streamed call does, step by step (then it ends, unless a step ended it).
STREAMS = st.lists(STEPS, max_size=5) | st.builds(lambda s: [*s, "forever"], st.lists(CHUNKS.map(Answer), max_size=2))

THEN = st.one_of(ANSWERS.map(Answer), RAISED.map(Raise))
CALLS = st.one_of(ANSWERS.map(Answer), RAISED.map(Raise), st.just(Hang()),
                  st.builds(Stubborn, st.floats(0.01, STUBBORN), THEN),
                  st.builds(Block, st.floats(0.0, STUBBORN / 3), THEN))


class Misbehaving:
    """The provider: each call plays the next drawn behaviour (the last one again after)."""

    def __init__(self, name: str, script: list[Any], started: list[float]) -> None:
        self.name, self.script, self.started = name, script, started
        self.key = Secret(KEY)

    def _next(self) -> Any:
        self.started.append(anyio.current_time())
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def list_models(self) -> list[ModelCard]:
        return [ModelCard.for_provider(self.name, m, provider_type="misbehaving", price=PRICE,
                                       features={"streaming"}, context_window=8192) for m in ("m1", "m2")]

    async def _play(self, step: Any) -> Any:
        if isinstance(step, Stubborn):
            end = time.monotonic() + step.seconds
            while time.monotonic() < end:
                try:
                    await anyio.sleep(0.01)
                except anyio.get_cancelled_exc_class():
                    pass  # ignored, for a while
            return await self._play(step.then)
        if isinstance(step, Block):
            time.sleep(step.seconds)
            return await self._play(step.then)
        if isinstance(step, Hang):
            await anyio.sleep_forever()
        if isinstance(step, Raise):
            raise step.exc
        if isinstance(step.value, BuildUsage | BuildLimits):
            return step.value.build()
        return step.value

    async def complete(self, model: ModelCard, request: AIRequest) -> Any:
        return await self._play(self._next())

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[Any]:
        steps = self._next()
        for step in steps:
            if step == "forever":
                while True:
                    yield StreamChunk("more ")
                    await anyio.sleep(0.005)
            yield await self._play(step)

    async def aclose(self) -> None:
        pass


def plugins(script: list[Any], started: list[float]) -> PluginManager:
    class ThirdParty:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("misbehaving", lambda spec: Misbehaving(spec.name, script, started))]

    pm = PluginManager(load_entry_points=False)
    pm.register(ThirdParty(), "third-party")
    return pm


def config(budget: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"providers": [{"name": "bad", "type": "misbehaving"}], "timeout": TIMEOUT,
            "fallback": {"max_attempts": MAX_ATTEMPTS},
            "budget": {"limits": [{"scope": "global", "period": "day", "limit": "5"}], **(budget or {})}}


async def reserved_and_committed(mm: ModelManager) -> tuple[Decimal, Decimal]:
    card = next(iter(mm.selector.models.values()))
    (state,) = await mm.budget_backend.usage(mm.tokens.charges(card, None))
    return state.reserved, state.committed


def check_outcome(outcome: Any, started: list[float], t0: float, ended: float) -> None:
    """The promises that hold for one request, whatever the plugin did: an answer or a
    SquirrelError naming the provider and model; at most MAX_ATTEMPTS calls, none started
    after the deadline; every attempt that failed for the plugin's bug charged (it may have
    been billed); no key in what the error shows."""
    assert len(started) <= MAX_ATTEMPTS, started
    assert all(s <= t0 + TIMEOUT + 0.001 for s in started), (t0, started)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, SquirrelError), repr(outcome)
        texts = [str(outcome), repr(outcome), "".join(traceback.format_exception(outcome))]
        secret_scanner.collect(*texts)
        assert not secret_scanner.leaky(texts)
        attempts = getattr(outcome, "attempts", ())
        if isinstance(outcome, e.ModelError):
            assert outcome.model_id in ("bad/m1", "bad/m2") and outcome.provider == "bad", outcome
        if "a bug in its plugin" in str(outcome):
            assert "provider 'bad'" in str(outcome)
    else:
        attempts = outcome.attempts
    for rec in attempts:
        assert rec.model_id in ("bad/m1", "bad/m2")
        err = rec.error
        if err is not None:
            assert isinstance(err, SquirrelError), repr(err)
            if ("a bug in its plugin" in str(err) or "usage." in str(err) or "rate_limits." in str(err)) \
                    and rec.outcome == "error":
                cost = rec.cost if rec.cost is not None else getattr(err, "cost", None)
                assert cost is not None and cost > 0, (rec, err)  # never a silent $0


async def run_request(script: list[Any], *, stream: bool, budget: dict[str, Any] | None = None,
                      after: Callable[[ModelManager], Any] | None = None) -> None:
    started: list[float] = []
    mm = ModelManager(config(budget), plugins=plugins(script, started))
    async with mm:
        t0 = anyio.current_time()
        outcome: Any
        with anyio.fail_after(30):  # a hang fails here, not the suite
            try:
                if stream:
                    async with mm.stream(AIRequest.from_prompt("hi there", max_tokens=20)) as s:
                        async for _ in s:
                            pass
                    outcome = s.response
                else:
                    outcome = await mm.complete(AIRequest.from_prompt("hi there", max_tokens=20))
            except Exception as exc:  # what it ended with is the subject
                outcome = exc
        ended = anyio.current_time()
        check_outcome(outcome, started, t0, ended)
        reserved, committed = await reserved_and_committed(mm)
        assert reserved == 0 and committed <= Decimal(5)
        if hasattr(mm.budget_backend, "open_reservations"):
            assert mm.budget_backend.open_reservations == 0
        if after is not None:
            await after(mm)
