"""A hung PostgreSQL server cannot hold a request past its deadline: the whole server (the
postmaster and every backend) is SIGSTOPped before the reservation, while the upstream answers
(the settlement) or when it fails (the release). The kernel still accepts connections and takes
the statements, nothing answers and no ``statement_timeout`` fires: only the client's own
bounds can end the wait. The plugin's own timeouts are set far longer (30 s), so the request's
1 s deadline must. Afterwards, with the server running again: ``committed + reserved <=
limit``, the ledger says what was committed, no row twice, and once the leases expire nothing
stays reserved. ``squirrel usage`` and ``squirrel ask`` against the hung server end with one
line naming the error, without a traceback or the password."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import DeadlineExceeded, ServerError
from squirrel_models.secrets import Secret
from squirrel_models.testing import Fail, ScriptedProvider
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

from ..support import budget_cli, deadline_cases
from ..support.deadline_cases import BOUND, DEADLINE, TTL, card
from ..support.stalls import loop_stalls
from ..support.store_locks import Freeze, LockingProvider
from .pgserver import PASSWORD, PgServer

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)
ENV = "SQUIRREL_TEST_PG_URL"


@pytest.fixture
def frozen(own_server: PgServer) -> Iterator[Freeze]:
    freeze = Freeze(own_server)
    yield freeze
    own_server.resume()  # whatever the test did


def backend_on(server: PgServer, schema: str, now: list[float]) -> PostgresBudgetBackend:
    return PostgresBudgetBackend(
        PostgresBudgetOptions(schema=schema, connect_timeout_s=30.0, operation_timeout_s=30.0,
                              startup_timeout_s=30.0),
        clock=lambda: now[0], url=Secret(server.url))


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("phase", ["reservation", "settlement", "release"])
async def test_a_hung_server_ends_the_request_by_its_deadline(
        squirrel_manager: Callable[..., Any], own_server: PgServer, frozen: Freeze, schema: str,
        phase: str, stream: bool) -> None:
    now = [time.time()]
    b = backend_on(own_server, schema, now)
    p = LockingProvider("p", [card("m")], locker=frozen)
    if phase == "release":  # the failed attempt's release (and the retry's reservation)
        p.script("m", *[Fail(ServerError("boom", status_code=500))] * 3)
    async with deadline_cases.manager(squirrel_manager, b, p, warm=True) as mm:
        if phase == "reservation":
            await frozen.lock()
        waited = await deadline_cases.held_request(mm, stream, frozen)
        log.info("%s, the server hung: %.3f s", phase, waited)
        assert p.calls["m"] == (0 if phase == "reservation" else 1)
        await deadline_cases.assert_no_overspend(b)
        # Every reservation ends: settled by a call that ran once the server resumed, or its
        # lease expires and reconcile gives its headroom back.
        await deadline_cases.assert_every_reservation_ends(b, now)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_hung_at_the_first_request(squirrel_manager: Callable[..., Any], own_server: PgServer,
                                         frozen: Freeze, schema: str, stream: bool) -> None:
    """A manager not started yet opens its backend on its first request: connecting to the
    hung server and checking its schema happen inside that request's deadline."""
    now = [time.time()]
    b = backend_on(own_server, schema, now)
    p = ScriptedProvider("p", [card("m")])
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}],
                                      "reservation_ttl": TTL}, "timeout": 2.0},
                          budget_backend=b)
    mm.register_model(p.models[0], p)
    await frozen.lock()
    async with loop_stalls() as stalls:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await deadline_cases.request(mm, stream)
        waited = stalls.elapsed(t0)
    await frozen.unlock()
    assert waited <= DEADLINE + BOUND, waited
    assert p.calls["m"] == 0
    async with mm:  # starts now that the server answers, and serves
        assert (await mm.complete(deadline_cases.PROMPT, timeout=5)).text
        assert (await b.audit())["open"] == 0


@pytest.mark.parametrize("command", ["usage", "ask", "budget"])
def test_the_cli_on_a_hung_server_says_so_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_server: PgServer, frozen: Freeze,
        schema: str, command: str) -> None:
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, own_server.url)
    options = (f'{{ url_env = "{ENV}", schema = "{schema}", connect_timeout_s = 1, '
               'operation_timeout_s = 1, startup_timeout_s = 2 }')
    config = budget_cli.write_config(tmp_path, "postgres", options)
    budget_cli.fill_ledger(config, PostgresBudgetBackend)
    own_server.pause()
    outputs = budget_cli.hung_store_outputs(config, command)
    own_server.resume()
    log.info("squirrel %s on a hung server: %s", command, outputs[1].strip())
    assert not any(PASSWORD in out for out in outputs)
