"""The budget invariant over interleaved reservations, partial streams, cancellations and
crashes, on the memory backend (the same machine runs on SQLite and PostgreSQL in their
suites): see :mod:`tests.support.budget_machine`."""

from __future__ import annotations

import pytest
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

from tests.support.budget_machine import run_budget_machine


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_budget_invariant_holds_over_interleavings(anyio_backend: str) -> None:
    run_budget_machine(lambda clock: MemoryBudgetBackend(clock=clock), anyio_backend=anyio_backend)
