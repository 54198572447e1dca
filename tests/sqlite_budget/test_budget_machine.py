"""The budget invariant over interleaved reservations, partial streams, cancellations and
crashes (lease expiry, then reconcile), on a real SQLite file: see
:mod:`tests.support.budget_machine`."""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from tests.support.budget_machine import run_budget_machine


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_budget_invariant_holds_over_interleavings(tmp_path: Path, anyio_backend: str) -> None:
    path = str(tmp_path / "budget.sqlite3")
    run_budget_machine(lambda clock: SqliteBudgetBackend(SqliteBudgetOptions(path=path), clock=clock),
                       anyio_backend=anyio_backend)
