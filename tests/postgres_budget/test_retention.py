"""Ledger retention on PostgreSQL: ``prune`` in batched DELETEs and the
``ledger_retention_days`` option applied by ``reconcile``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions
from squirrel_models_postgres_budget import backend as backend_module

from tests.support import ledger_retention
from tests.support.ledger_retention import attempt

pytestmark = pytest.mark.anyio

Make = Callable[..., PostgresBudgetBackend]


async def test_prune_deletes_old_rows_and_keeps_budgets(make_backend: Make) -> None:
    await ledger_retention.assert_prune_keeps_budgets(make_backend())


def test_retention_option_is_validated() -> None:
    ledger_retention.assert_retention_option_is_validated(PostgresBudgetOptions)


async def test_prune_deletes_in_batches_and_logs_the_pruned_cost(
        make_backend: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def count() -> list[str]:
        statements: list[str] = []  # one a transaction
        fetch = PostgresBudgetBackend._fetch

        async def counting(self: PostgresBudgetBackend, operation: str, sql: str, params: object):  # type: ignore[no-untyped-def]
            statements.append(operation)
            return await fetch(self, operation, sql, params)  # type: ignore[arg-type]

        monkeypatch.setattr(backend_module, "PRUNE_BATCH", 10)
        monkeypatch.setattr(PostgresBudgetBackend, "_fetch", counting)
        return statements

    await ledger_retention.assert_prune_in_batches(make_backend(), count, caplog, "squirrel_models_postgres_budget")


async def test_reconcile_applies_ledger_retention_days(make_backend: Make) -> None:
    # the backend with retention unset runs on the server's clock
    await ledger_retention.assert_reconcile_applies_retention_days(make_backend)


async def test_retention_by_the_server_clock(make_backend: Make) -> None:
    b = make_backend(ledger_retention_days=1)
    await b.record([attempt(1, datetime.now(UTC) - timedelta(days=2)),
                    attempt(2, datetime.now(UTC))])
    await b.reconcile()
    assert [row.request_id for row in await b.rows()] == ["r2"]
