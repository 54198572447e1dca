"""An idle pooled connection is given up before the common servers' own keep-alive closes it.

uvicorn (vLLM, llama.cpp's Python server, FastAPI apps) and Node close a connection idle for
5 s; the openai plugin kept one 5 s too (httpx's default), so a request sent about 5 s after
the last one could go out on a connection the server was closing, and fail as a connection
error that may have been sent (charged, retried, fallen back from) though the server never
read it. The real faulty server on 127.0.0.1 counts the connections it accepts: a request 4.5 s
after the last, a wait no 5 s server would survive, comes on a new one. On both engines."""

from __future__ import annotations

import anyio
import pytest
from squirrel_models_openai import OpenAIOptions, OpenAIProvider
from squirrel_models_openai._http import KEEPALIVE_S

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV
from .mock import REQUEST, card

pytestmark = pytest.mark.anyio

#: uvicorn's and Node's default keep-alive, after which they close an idle connection.
SERVERS_KEEP_S = 5.0


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_an_idle_connection_is_left_before_a_5s_server_closes_it(
        faulty: FaultyServer, canary_env: str, anyio_backend: str, transport: str) -> None:
    if transport == "aiohttp" and anyio_backend != "asyncio":
        pytest.skip("aiohttp runs only under asyncio")
    p = OpenAIProvider("faulty", OpenAIOptions(base_url=faulty.base_url, api_key_env=CANARY_ENV,
                                               discover=False, transport=transport, timeout=10.0))
    try:
        await p.complete(card("ok", "faulty"), REQUEST)
        await p.complete(card("ok", "faulty"), REQUEST)
        assert faulty.connections == 1  # kept alive between requests made one after another
        # Idle past our expiry, but short of the server's: a 5 s server has not closed yet,
        # so the race is only the client's to avoid.
        await anyio.sleep(SERVERS_KEEP_S - 0.5)
        await p.complete(card("ok", "faulty"), REQUEST)
        assert faulty.connections == 2
    finally:
        await p.aclose()


def test_the_expiry_is_below_the_common_servers_keep_alive() -> None:
    assert KEEPALIVE_S <= SERVERS_KEEP_S - 1.0
