"""Opening the PostgreSQL backend (connecting, checking and migrating the schema, opening the
pool) is bounded: by ``startup_timeout_s``, and by a request's deadline when that request
starts the manager. A schema another instance holds locked while it migrates, or a server that
accepts connections and never answers, made start-up wait for ``operation_timeout_s`` (10 s)
or libpq's ``connect_timeout`` (twice: with and without TLS) instead."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest, DeadlineExceeded, ModelCard, Price
from squirrel_models.secrets import Secret
from squirrel_models.testing import ScriptedProvider
from squirrel_models_postgres_budget import BudgetStoreTimeout, PostgresBudgetBackend, PostgresBudgetOptions
from squirrel_models_postgres_budget.schema import LOCK_CLASS

from ..support.stalls import loop_stalls
from ..support.store_locks import PgLocker
from .pgserver import PgServer

pytestmark = pytest.mark.anyio
Make = Callable[..., PostgresBudgetBackend]

STARTUP = 1.0
#: Scheduling on a busy 2-core machine, and the wait's own margin.
SLACK = 0.5
FIELD = "budget.options.startup_timeout_s"


def schema_lock(pg_server: PgServer, schema: str) -> PgLocker:
    """Another instance migrating ``schema``: it holds the migration's advisory lock."""
    return PgLocker(pg_server.url, f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{schema}'))")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL of a server that accepts TCP connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    yield f"postgresql://router:pw@127.0.0.1:{port}/budget"
    sock.close()


async def test_a_locked_schema_fails_start_up_by_startup_timeout(make_backend: Make, pg_server: PgServer,
                                                                  schema: str) -> None:
    backend = make_backend(startup_timeout_s=STARTUP)
    with schema_lock(pg_server, schema) as locker:
        await locker.lock()
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreTimeout) as info:
                await backend.open()
            wall = stalls.elapsed(t0)
        await locker.unlock()
    assert wall <= STARTUP + SLACK, wall
    assert info.value.field == FIELD and FIELD in str(info.value)
    assert not info.value.by_deadline
    # Nothing was left half-done: once the other instance is through, start-up works.
    await backend.open()
    await backend.release(await backend.reserve([], Decimal("0.01"), ttl=60))


async def test_a_silent_server_fails_start_up_by_startup_timeout(silent_server: str) -> None:
    backend = PostgresBudgetBackend(PostgresBudgetOptions(startup_timeout_s=STARTUP),
                                    url=Secret(silent_server))
    try:
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreTimeout) as info:
                await backend.open()
            wall = stalls.elapsed(t0)
    finally:
        await backend.aclose()
    assert wall <= STARTUP + SLACK, wall
    assert info.value.field == FIELD and FIELD in str(info.value)
    assert "pw" not in str(info.value)


async def test_a_request_that_starts_the_manager_ends_by_its_deadline(
        squirrel_manager: Callable[..., Any], make_backend: Make, pg_server: PgServer, schema: str) -> None:
    """The default startup_timeout_s (15 s) is longer than the request's 1 s deadline."""
    card = ModelCard.for_provider("p", "m", provider_type="scripted", features={"streaming"},
                                  price=Price(Decimal("0.1"), Decimal("0.1")))
    p = ScriptedProvider("p", [card])
    backend = make_backend()
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}],
                                      "reservation_ttl": 10.0}, "timeout": 2.0}, budget_backend=backend)
    mm.register_model(card, p)
    with schema_lock(pg_server, schema) as locker:
        await locker.lock()
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await mm.complete(AIRequest.from_prompt("hi", max_tokens=8), timeout=1.0)
            wall = stalls.elapsed(t0)
        await locker.unlock()
    assert wall <= 1.0 + SLACK, wall
    assert p.calls["m"] == 0
    async with mm:  # the lock gone, the manager starts and answers
        response = await mm.complete(AIRequest.from_prompt("hi", max_tokens=8), timeout=5.0)
    assert response.text
