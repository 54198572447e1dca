"""aiohttp's engine sends its POSTs below ``ClientSession`` on the aiohttp releases whose
``_request`` was read (``_aiohttp_below.VERIFIED``), and through the session elsewhere or
through a proxy. On both paths, against the faulty server on 127.0.0.1: a kept-alive
connection serves the next requests, the pool's limit holds, and a request cancelled while its
answer is awaited closes its connection at once (it does not go back to the pool half-read).
The rest of what both paths guarantee (timeouts, errors, streams) is test_faulty.py's, run on
both."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp.client_proto import ResponseHandler
from squirrel_models_openai import OpenAIOptions, OpenAIProvider, _aiohttp_below
from squirrel_models_openai._http import AiohttpEngine

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV, through_the_session
from .mock import REQUEST, card

pytestmark = pytest.mark.anyio


@pytest.fixture
def fresh_detection() -> Any:
    _aiohttp_below.below_session_supported.cache_clear()
    yield _aiohttp_below.below_session_supported
    _aiohttp_below.below_session_supported.cache_clear()


def _read() -> bool:
    low, high = _aiohttp_below.VERIFIED
    return low <= tuple(int(p) for p in aiohttp.__version__.split(".")[:2]) < high


def test_the_installed_aiohttp_was_read() -> None:
    """An aiohttp in the range read is driven below the session. Outside it (a release newer
    than this code) the engine keeps the session, which is correct, so this skips, saying so:
    read the new ``_request`` and widen ``VERIFIED``."""
    if not _read():
        pytest.skip(f"aiohttp {aiohttp.__version__} was not read: the engine goes through the session")
    assert _aiohttp_below.below_session_supported()


def test_a_release_without_the_internals_goes_through_the_session(
        fresh_detection: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp.helpers

    monkeypatch.delattr(aiohttp.helpers, "TimerNoop")
    assert fresh_detection() is False


@pytest.mark.parametrize("version", ["3.11.18", "3.15.0", "4.0.0a1", "dev"])
def test_an_aiohttp_not_read_goes_through_the_session(fresh_detection: Any, version: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp, "__version__", version)
    assert fresh_detection() is False


def test_a_signature_without_a_parameter_given_goes_through_the_session(
        fresh_detection: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def set_response_params(self: Any, *, timer: Any = None, read_until_eof: bool = False) -> None: ...

    assert "read_timeout" in inspect.signature(ResponseHandler.set_response_params).parameters
    monkeypatch.setattr(ResponseHandler, "set_response_params", set_response_params)
    assert fresh_detection() is False


@pytest.fixture(params=["below", "through"], ids=["below the session", "through the session"])
async def provider(request: pytest.FixtureRequest, anyio_backend: str, faulty: FaultyServer, canary_env: str,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIProvider]:
    if anyio_backend != "asyncio":
        pytest.skip("aiohttp runs only under asyncio")
    if request.param == "through":
        through_the_session(monkeypatch)
    elif not _aiohttp_below.below_session_supported():
        pytest.skip(f"aiohttp {aiohttp.__version__} is driven through the session")
    p = OpenAIProvider("faulty", OpenAIOptions(base_url=faulty.base_url, api_key_env=CANARY_ENV, discover=False,
                                               transport="aiohttp", max_connections=2, timeout=5.0))
    try:
        await p.complete(card("ok", "faulty"), REQUEST)
        assert isinstance(p._client, AiohttpEngine)
        assert (p._client._below is not None) == (request.param == "below")
        yield p
    finally:
        await p.aclose()


async def test_a_kept_alive_connection_serves_the_next_requests(provider: OpenAIProvider,
                                                                faulty: FaultyServer) -> None:
    for _ in range(3):
        await provider.complete(card("ok", "faulty"), REQUEST)
        async for _ in provider.stream(card("ok", "faulty"), REQUEST):
            pass
    assert faulty.max_open_connections == 1


async def test_the_pool_limit_holds(provider: OpenAIProvider, faulty: FaultyServer) -> None:
    faulty.script("ok", *["slow:0.2"] * 6)
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(provider.complete, card("ok", "faulty"), REQUEST)
    assert faulty.requests == 7 and faulty.max_open_connections == 2


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_cancelled_request_closes_its_connection(provider: OpenAIProvider, faulty: FaultyServer,
                                                         stream: bool) -> None:
    faulty.script("ok", "hang-stream" if stream else "hang")
    assert faulty.open_connections == 1  # the kept-alive one, idle

    async def call() -> None:
        if stream:
            async for _ in provider.stream(card("ok", "faulty"), REQUEST):
                pass
        else:
            await provider.complete(card("ok", "faulty"), REQUEST)

    with anyio.move_on_after(0.5) as scope:
        await call()
    assert scope.cancelled_caught
    # Closed in about 10 ms; an answer left unreleased would stay open until its read timeout.
    with anyio.fail_after(2):
        while faulty.open_connections:  # closed by the client, not kept half-read
            await anyio.sleep(0.01)
    await provider.complete(card("ok", "faulty"), REQUEST)  # a new connection serves the next


async def test_a_proxy_keeps_the_session(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("aiohttp runs only under asyncio")
    options = OpenAIOptions(base_url="http://127.0.0.1:9/v1", discover=False, transport="aiohttp")
    engine = AiohttpEngine(options, {}, proxy="http://127.0.0.1:9")
    try:
        assert engine._below is None
    finally:
        await engine.aclose()
