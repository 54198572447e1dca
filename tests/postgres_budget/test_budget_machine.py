"""The budget invariant over interleaved reservations, partial streams, cancellations and
crashes (lease expiry, then reconcile), on a real PostgreSQL server started by the tests: see
:mod:`tests.support.budget_machine`."""

from __future__ import annotations

import uuid

import pytest
from squirrel_models.secrets import Secret
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

from tests.support.budget_machine import run_budget_machine

from .pgserver import PgServer


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_budget_invariant_holds_over_interleavings(pg_server: PgServer, anyio_backend: str) -> None:
    schema = f"m_{uuid.uuid4().hex[:12]}"
    run_budget_machine(
        lambda clock: PostgresBudgetBackend(PostgresBudgetOptions(schema=schema, connect_timeout_s=3.0),
                                            clock=clock, url=Secret(pg_server.url)),
        anyio_backend=anyio_backend)
