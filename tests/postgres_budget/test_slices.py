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
    StoreView,
    late_settle_on_a_dropped_slice,
    machine_backends,
    run_slice_machine,
    stalled_slice_gives_back_its_unused_room,
    wall_clock_jump_keeps_local_reservations,
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
async def test_a_late_settle_on_a_dropped_slice_counts_once(pg_server: PgServer) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    make = machine_backends(partial(PostgresBudgetBackend, url=Secret(pg_server.url)), PostgresBudgetOptions,
                            schema=schema, connect_timeout_s=3.0)
    await late_settle_on_a_dropped_slice(make, PgView(pg_server.url, schema), "key:late")


@pytest.mark.anyio
async def test_a_wall_clock_jump_keeps_local_reservations(pg_server: PgServer) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    make = machine_backends(partial(PostgresBudgetBackend, url=Secret(pg_server.url)), PostgresBudgetOptions,
                            schema=schema, connect_timeout_s=3.0)
    await wall_clock_jump_keeps_local_reservations(make, PgView(pg_server.url, schema), "key:jump")


@pytest.mark.anyio
async def test_a_stalled_slice_gives_back_its_unused_room(pg_server: PgServer) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    make = machine_backends(partial(PostgresBudgetBackend, url=Secret(pg_server.url)), PostgresBudgetOptions,
                            schema=schema, connect_timeout_s=3.0)
    await stalled_slice_gives_back_its_unused_room(make, PgView(pg_server.url, schema), "key:stall")
