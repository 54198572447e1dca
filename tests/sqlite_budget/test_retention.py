"""Ledger retention on SQLite: ``prune`` in short batches, the ``ledger_retention_days``
option applied by ``reconcile``, incremental vacuum only on files created for it, and pruning
while other tasks settle with ledger rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anyio
import pytest
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions
from squirrel_models_sqlite_budget import store as store_module
from squirrel_models_sqlite_budget.schema import MIGRATIONS, SCHEMA_VERSION

from tests.support import ledger_retention
from tests.support.ledger_retention import GLOBAL, NOW, attempt

pytestmark = pytest.mark.anyio

Make = Callable[..., SqliteBudgetBackend]


async def test_prune_deletes_old_rows_and_keeps_budgets(make_backend: Make) -> None:
    await ledger_retention.assert_prune_keeps_budgets(make_backend())


def test_retention_option_is_validated() -> None:
    ledger_retention.assert_retention_option_is_validated(SqliteBudgetOptions, path="x.db")


async def test_prune_works_in_batches_and_logs_the_pruned_cost(
        make_backend: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def count() -> list[str]:
        transactions: list[str] = []  # the write lock is held a batch at a time
        write = store_module.Store._write

        def counting(self: store_module.Store, operation: str):  # type: ignore[no-untyped-def]
            transactions.append(operation)
            return write(self, operation)

        monkeypatch.setattr(store_module, "PRUNE_BATCH", 10)
        monkeypatch.setattr(store_module.Store, "_write", counting)
        return transactions

    await ledger_retention.assert_prune_in_batches(make_backend(), count, caplog, "squirrel_models_sqlite_budget")


async def test_reconcile_applies_ledger_retention_days(make_backend: Make) -> None:
    await ledger_retention.assert_reconcile_applies_retention_days(make_backend,
                                                                   clock=lambda: NOW.timestamp())


async def test_a_new_file_gives_pruned_pages_back(make_backend: Make, db_path: str) -> None:
    b = make_backend()
    await b.record([attempt(i, NOW - timedelta(days=400, seconds=i)) for i in range(20_000)])
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert await b.prune(NOW) == 20_000
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("PRAGMA page_count").fetchone()[0] < pages / 4
    conn.close()


async def test_an_existing_file_keeps_its_auto_vacuum(make_backend: Make, db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)  # as an earlier release created it
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("PRAGMA application_id = 0x53714267")
    for statement in (s for migration in MIGRATIONS for s in migration):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
    b = make_backend()
    await b.record([attempt(i, NOW - timedelta(days=400, seconds=i)) for i in range(5_000)])
    assert await b.prune(NOW) == 5_000
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # never changed
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 0  # pages kept for new rows
    conn.close()


async def test_prune_while_others_settle_with_ledger_rows(
        make_backend: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten tasks settle with ledger rows (dated now) while another prunes old rows in batches
    of 50: every settle commits with its row, the prune removes exactly the old rows, and
    committed spend equals the remaining rows' costs plus the pruned rows' costs."""
    monkeypatch.setattr(store_module, "PRUNE_BATCH", 50)
    b = make_backend()
    old = [attempt(i, NOW - timedelta(days=90, seconds=i), cost="0.002") for i in range(1_000)]
    for r in old:  # the old rows settled too: their spend is in the bucket
        reservation = await b.reserve([GLOBAL], Decimal("0.01"), ttl=60)
        await b.settle(reservation, r.cost or Decimal(0), ledger=r)
    pruned: list[int] = []

    async def settler(worker: int) -> None:
        for i in range(40):
            reservation = await b.reserve([GLOBAL], Decimal("0.01"), ttl=60)
            row = attempt(10_000 + worker * 100 + i, datetime.now(UTC), cost="0.003")
            await b.settle(reservation, Decimal("0.003"), ledger=row)

    async def pruner() -> None:
        pruned.append(await b.prune(NOW - timedelta(days=30)))

    async with anyio.create_task_group() as tg:
        for worker in range(10):
            tg.start_soon(settler, worker)
        tg.start_soon(pruner)

    assert pruned == [len(old)]
    remaining = await b.rows()
    assert len(remaining) == 400 and all(r.cost == Decimal("0.003") for r in remaining)
    (u,) = await b.usage([GLOBAL])
    pruned_cost = sum((r.cost or Decimal(0) for r in old), Decimal(0))
    assert u.committed == sum((r.cost or Decimal(0) for r in remaining), Decimal(0)) + pruned_cost
    assert u.reserved == 0 and (await b.audit())["mismatched"] == []
