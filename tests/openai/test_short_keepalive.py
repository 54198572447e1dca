"""Servers that close an idle connection sooner than the plugin gives one up (gunicorn keeps
one 2 s; any server may close one at any time), real servers on 127.0.0.1, every engine.

A close the client can see before it writes a request (the server's FIN, or a reset, waiting
on the socket) makes the pool leave the connection for a new one: the request is answered,
one attempt, nothing charged twice. httpcore polls the socket before reusing a connection;
aiohttp only asked whether its transport was closing, which it is once the event loop has
read the FIN, so a loop busy since the FIN arrived handed the closed connection out (the
request failed as a connection error that may have been sent, charged its worst case, and
was retried): it failed here before the plugin's connector polled the socket too.

A close the client cannot see, still on its way as the request is written, meets the request:
the server closes as the request's first bytes arrive, without reading them. Nothing the
client is told (httpcore, aiohttp: a reset or an end of stream after the request was written
whole, not one byte of answer, on a reused connection) tells it from a server that read the
request and then reset: the same errors, from a server that did read it, are checked to be
charged the same. So it stays a failed attempt that may have been sent, charged its worst
case and retried (HTTP forbids replaying a non-idempotent request unless it is known not to
have been applied; Go's net/http replays a POST on a reused connection only when nothing of
it was written, aiohttp replays only idempotent methods)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from squirrel_models import ModelRequirements, ProviderConnectionError
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.faulty_server import FaultyServer
from ..support.idle_close import short_keepalive
from .conftest import CANARY_ENV
from .mock import card
from .test_unanswered import REQUEST, charges, config, spend

pytestmark = pytest.mark.anyio

#: The server's keep-alive, well below the plugin's own (KEEPALIVE_S, 4 s).
IDLE_S = 1.0
NEED = ModelRequirements(models=frozenset({"up/ok"}))


@pytest.mark.parametrize("busy", [False, True], ids=["idle loop", "busy loop"])
async def test_a_connection_the_server_closed_is_left_for_a_new_one(
        canary_env: str, transport: str, busy: bool) -> None:
    with short_keepalive(idle_s=IDLE_S) as server:
        p = OpenAIProvider("short", OpenAIOptions(base_url=server.base_url, api_key_env=CANARY_ENV,
                                                  discover=False, transport=transport, timeout=10.0))
        try:
            await p.complete(card("ok", "short"), REQUEST)
            if busy:
                # The event loop does not run while the server's FIN arrives, nor after, until
                # the next request takes a connection: the FIN waits unread on the socket.
                time.sleep(IDLE_S + 0.5)
            else:
                await anyio.sleep(IDLE_S + 0.5)
            resp = await p.complete(card("ok", "short"), REQUEST)
        finally:
            await p.aclose()
    assert resp.text == "hello"
    assert (server.connections, server.requests) == (2, 2)


@pytest.mark.parametrize("server_kind", ["closes as it arrives", "reads it, then resets"])
async def test_a_close_that_meets_the_request_is_charged_as_sent(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        transport: str, server_kind: str) -> None:
    with short_keepalive(on_arrival=True) as short:
        if server_kind == "closes as it arrives":
            base_url = short.base_url
        else:  # the faulty server reads the second request whole, then resets the connection
            faulty.script("ok", "ok", "reset")
            base_url = faulty.base_url
        cfg = config(base_url, model="ok")
        cfg["providers"][0]["options"]["transport"] = transport
        cfg["fallback"]["max_attempts"] = 2
        async with squirrel_manager(cfg) as mm:
            await mm.complete(REQUEST, NEED, timeout=10)  # leaves its connection in the pool
            resp = await mm.complete(REQUEST, NEED, timeout=10)  # on it: met by the close
            committed, reserved, rows = await spend(mm, "ok")
            worst = charges(mm, "ok")["worst_case"]
    if server_kind == "closes as it arrives":
        # The first request, and the retry on a new connection: the second never read.
        assert (short.requests, short.closed_on_arrival, short.connections) == (2, 1, 2)
    else:
        assert faulty.requests == 3 and faulty.behaviours[1] == "reset"
    assert [a.outcome for a in resp.attempts] == ["error", "ok"]
    error = resp.attempts[0].error
    assert isinstance(error, ProviderConnectionError) and error.cost == worst > 0
    first, met, retried = rows
    assert (met.error_type, met.usage_source, met.cost) == ("ProviderConnectionError", "cut", worst)
    assert reserved == 0 and committed == first.cost + worst + retried.cost
