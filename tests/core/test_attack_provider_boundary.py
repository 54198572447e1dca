"""A third-party provider plugin that misbehaves in every way hypothesis draws (see
``tests/support/misbehaving.py``): wrong types, junk usage, exceptions of every kind (holding
the API key, whose ``str()`` raises, ``BaseException`` subclasses, a spurious cancellation),
``ModelError``s with junk fields, streams that break, yield junk or never end, cancellation
ignored and the event loop blocked for a while. Through ``complete()`` and ``stream()``, on
asyncio and trio, and the synchronous API: every request ends with an answer or a
``SquirrelError`` naming the provider and model, nothing stays reserved, an attempt a plugin's
bug broke is charged (never a silent $0), at most ``max_attempts`` calls, none after the
deadline, and the key never shows.

Before: a response whose text was None, or whose ``rate_limits`` was junk, ended the request
with a raw ``TypeError``/``AttributeError`` and left its reservation open; a chunk that was
no ``StreamChunk`` did the same mid-stream (or passed as an empty answer); an exception whose
``str()`` raised, a ``BaseException`` subclass, ``SystemExit`` and a spurious asyncio
``CancelledError`` left raw; a ``ModelError`` whose ``retry_after`` was ``"5"`` or whose
``usage`` was junk raised ``TypeError``/``AttributeError`` from the fallback chain; a foreign
exception (a ``KeyError`` reading the answer) and a junk answer were charged $0."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    MalformedResponse,
    ModelError,
    ProviderResponse,
    SquirrelError,
    SyncModelManager,
    Usage,
)
from squirrel_models.errors import MidStreamError

from ..support.misbehaving import (
    CALLS,
    KEY,
    STREAMS,
    Answer,
    Exotic,
    Raise,
    StrRaises,
    config,
    plugins,
    run_request,
)

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "squirrel_models")


@BACKENDS
@SETTINGS
@given(script=st.lists(CALLS, min_size=1, max_size=4))
def test_complete_keeps_its_promises(backend: str, script: list[Any]) -> None:
    anyio.run(lambda: run_request(script, stream=False), backend=backend)


@BACKENDS
@SETTINGS
@given(script=st.lists(STREAMS, min_size=1, max_size=3))
def test_stream_keeps_its_promises(backend: str, script: list[Any]) -> None:
    anyio.run(lambda: run_request(script, stream=True), backend=backend)


# --- examples that failed before, one each ----------------------------------------------------

def _first_error(exc: BaseException) -> Any:
    """The first attempt's error (the error itself when the chain raised it as it is)."""
    attempts = getattr(exc, "attempts", None)
    return attempts[0].error if attempts else exc


def _request() -> AIRequest:
    return AIRequest.from_prompt("hi there", max_tokens=20)


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [ProviderResponse(None, Usage(1, 1)),  # type: ignore[arg-type]
                                    ProviderResponse("x", Usage(1, 1), rate_limits=5)],  # type: ignore[arg-type]
                         ids=["text-None", "rate_limits-junk"])
async def test_a_junk_answer_is_a_charged_malformed_response(answer: Any) -> None:
    async with _manager([Answer(answer)]) as mm:
        with pytest.raises(SquirrelError) as info:
            await mm.complete(_request())
        err = _first_error(info.value)
        assert isinstance(err, MalformedResponse) and "provider 'bad' returned" in str(err)
        assert err.cost > 0  # the call was answered: it may have been billed
        assert mm.budget_backend.open_reservations == 0


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [None, "text", 5], ids=["None", "str", "int"])
async def test_a_junk_chunk_mid_stream_is_a_mid_stream_error(chunk: Any) -> None:
    from squirrel_models import StreamChunk

    async with _manager([[Answer(StreamChunk("a ")), Answer(chunk)]]) as mm:
        with pytest.raises(MidStreamError) as info:
            async with mm.stream(_request()) as s:
                async for _ in s:
                    pass
        assert info.value.partial_text == "a " and "provider 'bad' returned a chunk" in str(info.value)
        assert mm.budget_backend.open_reservations == 0


@pytest.mark.anyio
@pytest.mark.parametrize("make", [StrRaises, lambda: Exotic(KEY), lambda: SystemExit(3),
                                  lambda: KeyError("choices")],
                         ids=["str-raises", "BaseException", "SystemExit", "KeyError"])
async def test_what_a_provider_raises_is_a_charged_model_error(make: Any) -> None:
    async with _manager([Raise(make())]) as mm:
        with pytest.raises(SquirrelError) as info:
            await mm.complete(_request())
        err = _first_error(info.value)
        assert isinstance(err, ModelError) and "provider 'bad' raised" in str(err)
        assert err.cost > 0  # it may have left before the plugin failed
        assert KEY not in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), [("retry_after", "5"), ("usage", 5), ("cost", Decimal("NaN")),
                                         ("model_id", "other/model")])
async def test_a_model_error_with_junk_fields_is_read_safely(field: str, value: Any) -> None:
    from squirrel_models import ServerError

    err = ServerError("upstream failed")
    setattr(err, field, value)
    async with _manager([Raise(err)]) as mm:
        with pytest.raises(SquirrelError) as info:
            await mm.complete(_request())
    failed = _first_error(info.value)
    assert failed.model_id in ("bad/m1", "bad/m2") and failed.retry_after is None and failed.usage is None
    assert failed.cost is None or failed.cost >= 0


def test_the_sync_api_keeps_them_too() -> None:
    for script in ([Answer(None)], [Raise(Exotic("x"))], [Raise(StrRaises())]):
        with SyncModelManager(config(), plugins=plugins(script, [])) as mm:
            with pytest.raises(SquirrelError, match="provider 'bad'"):
                mm.complete(_request())
            assert mm.manager.budget_backend.open_reservations == 0


def _manager(script: list[Any]) -> Any:
    from squirrel_models import ModelManager

    return ModelManager(config(), plugins=plugins(script, []))
