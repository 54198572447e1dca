"""An idle pooled connection of huggingface_hub's client is given up before the common
servers' own keep-alive closes it.

uvicorn (vLLM, llama.cpp's Python server, FastAPI apps), TGI's router and Node close a
connection idle for 5 s; huggingface_hub's async client (httpx2, its defaults) kept one 5 s
too, so a request sent about 5 s after the last could go out on a connection the server was
closing, and fail as a connection error that may have been sent (charged, retried, fallen
back from) though the server never read it: the race the openai plugin left in e2c915f. The
real faulty server on 127.0.0.1 counts the connections it accepts: a request 4.5 s after the
last, a wait no 5 s server would survive, comes on a new one. (A stream has a client of its
own, closed when it ends: it never reuses a connection.)"""

from __future__ import annotations

import anyio
import pytest
from squirrel_models import ModelCard, ModelOverride
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider
from squirrel_models_huggingface._bounded import KEEPALIVE_S

from ..support.faulty_server import FaultyServer
from ..support.faulty_suite import REQUEST
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

#: uvicorn's and Node's default keep-alive, after which they close an idle connection.
SERVERS_KEEP_S = 5.0


async def test_an_idle_connection_is_left_before_a_5s_server_closes_it(
        faulty: FaultyServer, canary_env: str) -> None:
    p = HuggingFaceProvider("faulty", HuggingFaceOptions(base_url=faulty.base_url, token_env=CANARY_ENV,
                                                         timeout=10.0), models=[ModelOverride("ok")])
    ok = ModelCard.for_provider("faulty", "ok", provider_type="huggingface")
    try:
        await p.complete(ok, REQUEST)
        await p.complete(ok, REQUEST)
        assert faulty.connections == 1  # kept alive between requests made one after another
        # Idle past our expiry, but short of the server's: a 5 s server has not closed yet,
        # so the race is only the client's to avoid.
        await anyio.sleep(SERVERS_KEEP_S - 0.5)
        await p.complete(ok, REQUEST)
        assert faulty.connections == 2
    finally:
        await p.aclose()


def test_the_expiry_is_below_the_common_servers_keep_alive() -> None:
    assert KEEPALIVE_S <= SERVERS_KEEP_S - 1.0
