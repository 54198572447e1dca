"""Leased slices on PostgreSQL (issue 16): the slice state machine of
:mod:`tests.support.slice_machine` against a real server."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import anyio
import psycopg
import pytest
from squirrel_models.secrets import Secret
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

from tests.support.slice_machine import (
    SCENARIOS,
    StoreView,
    machine_backends,
    run_slice_machine,
    scenario_scope,
)

from .pgserver import PgServer


class PgView(StoreView):
    def __init__(self, url: str, schema: str) -> None:
        self.url, self.s = url, schema

    def _query(self, sql: str, *args: Any) -> Any:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql.replace("{s}", self.s), args).fetchone()

    async def totals(self, scope: str) -> tuple[int, int]:
        row = self._query("SELECT committed, reserved FROM {s}.buckets WHERE scope = %s", scope)
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def ledger_sum(self, scope: str) -> int:
        row = self._query("SELECT coalesce(sum(cost), 0) FROM {s}.ledger WHERE scopes = %s",
                          [scope])
        return int(row[0])

    async def lease(self, lease_id: str) -> int | None:
        row = self._query("SELECT r.state, r.amount, l.cost FROM {s}.reservations r "
                          "LEFT JOIN {s}.ledger l ON l.id = r.charge_row WHERE r.id = %s", lease_id)
        if row is None:
            return None
        return int(row[1]) if row[0] == 0 else int(row[2] or 0)

    async def open_leases(self, scope: str) -> int:
        row = self._query("SELECT count(*) FROM {s}.reservations WHERE state = 0 AND scopes = %s",
                          [scope])
        return int(row[0])

    async def crash(self, backend: Any) -> None:
        self.stop_slices(backend)
        driver, backend._driver = backend._driver, None
        backend._closed = True
        if driver is not None:
            with anyio.CancelScope(shield=True):
                await driver.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_slices_hold_the_invariant_over_interleavings(pg_server: PgServer, anyio_backend: str) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    make = machine_backends(partial(PostgresBudgetBackend, url=Secret(pg_server.url)), PostgresBudgetOptions,
                            schema=schema, connect_timeout_s=3.0)
    run_slice_machine(make, lambda: PgView(pg_server.url, schema), anyio_backend=anyio_backend)


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
async def test_slice_scenario(pg_server: PgServer, scenario: Any) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    make = machine_backends(partial(PostgresBudgetBackend, url=Secret(pg_server.url)), PostgresBudgetOptions,
                            schema=schema, connect_timeout_s=3.0)
    await scenario(make, PgView(pg_server.url, schema), scenario_scope(scenario))
