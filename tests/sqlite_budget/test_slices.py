"""Leased slices on SQLite (issue 16): the slice state machine, options, and what a killed
process's slices become."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models.errors import ConfigError
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from tests.support.slice_machine import (
    SCENARIOS,
    StoreView,
    machine_backends,
    run_slice_machine,
    scenario_scope,
)


class SqliteView(StoreView):
    def __init__(self, path: str) -> None:
        self.path = path

    def _query(self, sql: str, *args: Any) -> Any:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return conn.execute(sql, args).fetchone()
        finally:
            conn.close()

    async def totals(self, scope: str) -> tuple[int, int]:
        row = self._query("SELECT committed, reserved FROM buckets WHERE scope = ?", scope)
        return (0, 0) if row is None else (row[0], row[1])

    async def ledger_sum(self, scope: str) -> int:
        row = self._query("SELECT coalesce(sum(cost), 0) FROM ledger WHERE scopes = ?",
                          json.dumps([scope]))
        return int(row[0])

    async def lease(self, lease_id: str) -> int | None:
        row = self._query("SELECT r.state, r.amount, l.cost FROM reservations AS r "
                          "LEFT JOIN ledger AS l ON l.id = r.charge_row WHERE r.id = ?", lease_id)
        if row is None:
            return None
        return int(row[1]) if row[0] == 0 else int(row[2] or 0)

    async def open_leases(self, scope: str) -> int:
        row = self._query("SELECT count(*) FROM reservations WHERE state = 0 AND charges = ?",
                          json.dumps([[scope, "total"]]))
        return int(row[0])

    async def crash(self, backend: Any) -> None:
        self.stop_slices(backend)

        def stop() -> None:
            backend._threads.shutdown()
            backend._store.close()
        await anyio.to_thread.run_sync(stop)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_slices_hold_the_invariant_over_interleavings(tmp_path: Path, anyio_backend: str) -> None:
    path = str(tmp_path / "budget.sqlite3")
    run_slice_machine(machine_backends(SqliteBudgetBackend, SqliteBudgetOptions, path=path),
                      lambda: SqliteView(path), anyio_backend=anyio_backend)


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
async def test_slice_scenario(tmp_path: Path, scenario: Any) -> None:
    path = str(tmp_path / "budget.sqlite3")
    await scenario(machine_backends(SqliteBudgetBackend, SqliteBudgetOptions, path=path),
                   SqliteView(path), scenario_scope(scenario))


@pytest.mark.parametrize(("field", "value"), [
    ("slices", "yes"), ("slice_flush_s", 0), ("slice_flush_s", float("nan")),
    ("slice_lease_s", -1), ("slice_requests", 0), ("slice_requests", 1.5),
    ("slice_fraction", 0), ("slice_fraction", 1.5), ("slice_fraction", True)])
def test_bad_slice_options_name_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        SqliteBudgetOptions(path=str(tmp_path / "b.sqlite3"), **{field: value})
    assert info.value.field == field


def test_a_lease_shorter_than_four_flushes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        SqliteBudgetOptions(path=str(tmp_path / "b.sqlite3"), slice_flush_s=10, slice_lease_s=20)
    assert info.value.field == "slice_lease_s"


@pytest.mark.parametrize(("field", "value"), [("slice_flush_s", 0.5), ("slice_lease_s", 60),
                                              ("slice_requests", 8), ("slice_fraction", 0.5)])
def test_a_slice_option_without_slices_is_refused(tmp_path: Path, field: str, value: Any) -> None:
    """Before: accepted, and it did nothing (slices are off by default)."""
    with pytest.raises(ConfigError, match="slices = true") as info:
        SqliteBudgetOptions(path=str(tmp_path / "b.sqlite3"), **{field: value})
    assert info.value.field == field
    assert SqliteBudgetOptions(path=str(tmp_path / "b.sqlite3"), slices=True, **{field: value})
