"""aiohttp's read timeout (the ``timeout`` option, each read bounded) kept with timers shared
by slot (``_aiohttp_reads``) on the aiohttp releases read, aiohttp's own timer per read
elsewhere. On both, against the faulty server: a read that never ends is cut at its end and
not before, an answer whose bytes keep coming is not cut however long it takes in all,
concurrent reads are each cut at their own end; and with the slots, a request makes no timer
of its own. The handler is also driven directly: a read moved on, a timeout lowered, a read
dropped."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp.client_exceptions import SocketTimeoutError
from aiohttp.client_proto import ResponseHandler
from squirrel_models import MidStreamError, ProviderTimeout
from squirrel_models_openai import OpenAIOptions, OpenAIProvider, _aiohttp_reads
from squirrel_models_openai._http import AiohttpEngine

from ..support.faulty_server import FaultyServer
from ..support.stalls import loop_stalls
from .conftest import CANARY_ENV, through_the_session
from .mock import REQUEST, card

pytestmark = pytest.mark.anyio

TIMEOUT = 0.5


def _asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("aiohttp runs only under asyncio")


@pytest.fixture(params=["slots", "aiohttp's"], ids=["timers by slot", "aiohttp's timer per read"])
async def make(request: pytest.FixtureRequest, anyio_backend: str, faulty: FaultyServer, canary_env: str,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    _asyncio_only(anyio_backend)
    if request.param == "aiohttp's":
        through_the_session(monkeypatch)
    elif not _aiohttp_reads.read_slots_supported():
        pytest.skip(f"aiohttp {aiohttp.__version__} keeps its own read timer")
    made: list[OpenAIProvider] = []

    async def build(**options: Any) -> OpenAIProvider:
        options.setdefault("timeout", TIMEOUT)
        p = OpenAIProvider("faulty", OpenAIOptions(base_url=faulty.base_url, api_key_env=CANARY_ENV,
                                                   discover=False, transport="aiohttp", **options))
        made.append(p)
        await p.complete(card("ok", "faulty"), REQUEST)  # the engine made, a connection open
        assert isinstance(p._client, AiohttpEngine)
        factory = p._client.session.connector._factory  # type: ignore[union-attr]
        assert (factory.func is ResponseHandler) == (request.param == "aiohttp's")
        return p

    yield build
    for p in made:
        await p.aclose()


def test_the_installed_aiohttp_keeps_reads_by_slot() -> None:
    if not _aiohttp_reads._aiohttp_below.below_session_supported():
        pytest.skip(f"aiohttp {aiohttp.__version__} was not read: it keeps its own read timer")
    assert _aiohttp_reads.read_slots_supported()


def test_a_release_not_read_keeps_its_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    through_the_session(monkeypatch)
    assert _aiohttp_reads.read_slots_supported() is False


def test_a_handler_without_the_methods_keeps_its_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    _aiohttp_reads._handler_methods.cache_clear()
    try:
        monkeypatch.delattr(ResponseHandler, "_reschedule_timeout")
        assert _aiohttp_reads._handler_methods() is False
        assert _aiohttp_reads.read_slots_supported() is False
    finally:
        monkeypatch.undo()
        _aiohttp_reads._handler_methods.cache_clear()


async def test_a_factory_not_the_one_read_is_left_alone(anyio_backend: str) -> None:
    _asyncio_only(anyio_backend)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector()
    try:
        theirs = connector._factory = functools.partial(ResponseHandler, loop=loop, extra=1)  # type: ignore[attr-defined,call-arg]
        assert _aiohttp_reads.install(connector, loop, TIMEOUT) is False
        assert connector._factory is theirs  # type: ignore[attr-defined]
    finally:
        await connector.close()


async def test_a_read_that_never_ends_is_cut_at_its_end(make: Any, faulty: FaultyServer) -> None:
    p = await make()
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await p.complete(card("hang", "faulty"), REQUEST)
        assert time.monotonic() - t0 >= TIMEOUT  # never before its end
        assert stalls.elapsed(t0) < TIMEOUT + 1.0, stalls


async def test_an_answer_whose_bytes_keep_coming_is_not_cut(make: Any, faulty: FaultyServer) -> None:
    """Each read is bounded, not the whole answer: a word every 0.1 s for about a second,
    through many slots of 0.0625 s."""
    p = await make()
    t0 = time.monotonic()
    chunks = [c async for c in p.stream(card("trickle:0.1", "faulty"), REQUEST)]
    assert time.monotonic() - t0 > TIMEOUT
    assert "".join(c.text for c in chunks) == "Hello from the faulty server, nice to meet you."


async def test_a_stream_that_stalls_is_cut_a_timeout_after_its_last_bytes(make: Any,
                                                                         faulty: FaultyServer) -> None:
    p = await make()
    got: list[float] = []
    async with loop_stalls() as stalls:
        with pytest.raises(MidStreamError):
            async for _ in p.stream(card("hang-stream", "faulty"), REQUEST):
                got.append(time.monotonic())
        assert got
        assert stalls.elapsed(got[0]) < TIMEOUT + 1.0, stalls


async def test_concurrent_reads_are_each_cut_at_their_own_end(make: Any, faulty: FaultyServer) -> None:
    p = await make(max_connections=12, timeout=1.0)  # the slow answers well within it
    outcomes: dict[str, list[tuple[str, float]]] = {"hang": [], "slow:0.1": []}

    async def one(behaviour: str, delay: float) -> None:
        await anyio.sleep(delay)
        t0 = time.monotonic()
        try:
            await p.complete(card(behaviour, "faulty"), REQUEST)
            outcomes[behaviour].append(("ok", time.monotonic() - t0))
        except ProviderTimeout:
            outcomes[behaviour].append(("timeout", time.monotonic() - t0))

    async with anyio.create_task_group() as tg:
        for i in range(6):  # starts spread over two slots
            tg.start_soon(one, "hang", i * 0.02)
            tg.start_soon(one, "slow:0.1", i * 0.02)
    assert [o for o, _ in outcomes["slow:0.1"]] == ["ok"] * 6
    assert [o for o, _ in outcomes["hang"]] == ["timeout"] * 6
    assert all(took >= 1.0 for _, took in outcomes["hang"])


async def test_no_timer_per_request(make: Any, faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the slots, fifty requests make a timer per slot at most (its width is an eighth of
    the timeout, 7.5 s here) and the pool's own few, where aiohttp's own handler makes two
    per request."""
    p = await make(timeout=60.0)
    loop = asyncio.get_running_loop()
    timers = 0
    call_at = loop.call_at

    def counted(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counted)
    for _ in range(50):
        await p.complete(card("ok", "faulty"), REQUEST)
    monkeypatch.undo()
    slots = p._client.session.connector._factory.func is not ResponseHandler  # type: ignore[union-attr]
    assert timers < 10 if slots else timers >= 100


# --- the handler alone ------------------------------------------------------------------------


async def _handler(timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    if not _aiohttp_reads.read_slots_supported():
        pytest.skip(f"aiohttp {aiohttp.__version__} keeps its own read timer")
    handler = _aiohttp_reads._handler_type()(loop, _aiohttp_reads.ReadSlots(loop, timeout / 8))
    handler._read_timeout = timeout
    return handler


async def _cut(handler: Any, within: float) -> float | None:
    """When ``handler``'s read was cut (the loop's clock), or None if not ``within`` s."""
    with anyio.move_on_after(within):
        while handler.exception() is None:
            await asyncio.sleep(0.002)
        assert isinstance(handler.exception(), SocketTimeoutError)
        return asyncio.get_running_loop().time()
    return None


async def test_a_read_moved_on_is_cut_at_its_new_end(anyio_backend: str) -> None:
    _asyncio_only(anyio_backend)
    loop = asyncio.get_running_loop()
    handler = await _handler(0.2)
    handler.start_timeout()
    await asyncio.sleep(0.15)
    moved = loop.time()
    handler._reschedule_timeout()  # bytes came
    cut = await _cut(handler, 2.0)
    assert cut is not None and cut >= moved + 0.2


async def test_a_lowered_timeout_cuts_at_the_earlier_end(anyio_backend: str) -> None:
    _asyncio_only(anyio_backend)
    loop = asyncio.get_running_loop()
    handler = await _handler(10.0)
    handler.start_timeout()
    handler._read_timeout = 0.1
    lowered = loop.time()
    handler._reschedule_timeout()
    cut = await _cut(handler, 2.0)
    assert cut is not None and lowered + 0.1 <= cut < lowered + 2.0


async def test_a_dropped_read_is_never_cut(anyio_backend: str) -> None:
    _asyncio_only(anyio_backend)
    handler = await _handler(0.05)
    handler.start_timeout()
    handler._drop_timeout()
    assert await _cut(handler, 0.3) is None
    assert not handler._reads.slots or all(not m for m in handler._reads.slots.values())
    handler.start_timeout()  # the next read of the connection is bounded again
    assert await _cut(handler, 2.0) is not None


async def test_a_read_still_waiting_at_its_slot_gets_its_own_timer(
        anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _asyncio_only(anyio_backend)
    loop = asyncio.get_running_loop()
    handler = await _handler(0.2)
    timers: list[tuple[float, Any]] = []
    call_at = loop.call_at

    def seen(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append((when, callback))
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", seen)
    started = loop.time()
    handler.start_timeout()
    end = handler._read_end
    assert started + 0.2 <= end <= loop.time() + 0.2
    cut = await _cut(handler, 2.0)
    assert cut is not None and cut >= end
    # The slot's timer at the slot's start, then the read's own at its end (the others are
    # this test's sleeps).
    slot, own = [t for t in timers if t[1] in (handler._reads._due, handler._on_read_timeout)]
    assert slot[0] <= end and slot[1] == handler._reads._due
    assert own == (end, handler._on_read_timeout)
