"""Ledger retention on PostgreSQL: ``prune`` in batched DELETEs and the
``ledger_retention_days`` option applied by ``reconcile``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from squirrel_models.budget import Charge, LedgerRow
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions
from squirrel_models_postgres_budget import backend as backend_module

from tests.support import ledger_retention

pytestmark = pytest.mark.anyio

Make = Callable[..., PostgresBudgetBackend]
GLOBAL = Charge("global", "total", "total", Decimal("1000"))
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def attempt(n: int, at: datetime, cost: str = "0.001") -> LedgerRow:
    return LedgerRow(f"r{n}", 1, "p", "p/a", "ok", 100, 50, cost=Decimal(cost),
                     scopes=("global",), at=at)


async def test_prune_deletes_old_rows_and_keeps_budgets(make_backend: Make) -> None:
    await ledger_retention.assert_prune_keeps_budgets(make_backend())


def test_retention_option_is_validated() -> None:
    ledger_retention.assert_retention_option_is_validated(PostgresBudgetOptions)


async def test_prune_deletes_in_batches_and_logs_the_pruned_cost(
        make_backend: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    b = make_backend()
    await b.record([attempt(i, NOW - timedelta(days=100, seconds=i)) for i in range(25)])
    await b.record([attempt(100, NOW)])
    statements: list[str] = []
    fetch = PostgresBudgetBackend._fetch

    async def counting(self: PostgresBudgetBackend, operation: str, sql: str, params: object):  # type: ignore[no-untyped-def]
        statements.append(operation)
        return await fetch(self, operation, sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(backend_module, "PRUNE_BATCH", 10)
    monkeypatch.setattr(PostgresBudgetBackend, "_fetch", counting)
    with caplog.at_level(logging.INFO, "squirrel_models_postgres_budget"):
        assert await b.prune(NOW - timedelta(days=1)) == 25
    assert statements == ["prune"] * 3  # 10 + 10 + 5, each its own transaction
    assert "pruned 25 ledger row(s)" in caplog.text and "costing 0.025 USD" in caplog.text
    assert [r.request_id for r in await b.rows()] == ["r100"]


async def test_reconcile_applies_ledger_retention_days(make_backend: Make) -> None:
    b = make_backend(clock=lambda: NOW.timestamp(), ledger_retention_days=30)
    await b.record([attempt(1, NOW - timedelta(days=31)), attempt(2, NOW - timedelta(days=29)),
                    attempt(3, NOW)])
    r = await b.reserve([GLOBAL], Decimal("1"), ttl=60)
    await b.settle(r, Decimal("0.5"), ledger=attempt(4, NOW - timedelta(days=45)))
    assert await b.reconcile() == 0
    assert [row.request_id for row in await b.rows()] == ["r2", "r3"]
    (u,) = await b.usage([GLOBAL])
    assert u.committed == Decimal("0.5")
    keep_all = make_backend()  # unset: keep every row (and the server's clock)
    await keep_all.record([attempt(5, NOW - timedelta(days=3650))])
    await keep_all.reconcile()
    assert len(await keep_all.rows()) == 3


async def test_retention_by_the_server_clock(make_backend: Make) -> None:
    b = make_backend(ledger_retention_days=1)
    await b.record([attempt(1, datetime.now(UTC) - timedelta(days=2)),
                    attempt(2, datetime.now(UTC))])
    await b.reconcile()
    assert [row.request_id for row in await b.rows()] == ["r2"]
