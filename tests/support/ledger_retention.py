"""Ledger retention (``prune``) checks shared by the memory, SQLite and PostgreSQL suites:
pruning removes only rows older than the cut-off, returns how many, and never touches budgets.
Imports core alone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models.budget import Charge, LedgerPruning, LedgerRow
from squirrel_models.config import structure_options
from squirrel_models.errors import ConfigError

CUTOFF = datetime(2026, 6, 1, tzinfo=UTC)
CHARGE = Charge("global", "total", "total", Decimal("100"))
#: The SQL backends' retention checks: their "now", and a budget that never runs out.
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
GLOBAL = Charge("global", "total", "total", Decimal("1000"))


def attempt(n: int, at: datetime, cost: str = "0.001") -> LedgerRow:
    """Attempt ``n``'s ledger row (request ``r{n}``), dated ``at``."""
    return LedgerRow(f"r{n}", 1, "p", "p/a", "ok", 100, 50, cost=Decimal(cost),
                     scopes=("global",), at=at)


def row(n: int, at: datetime, cost: str | None = "0.01") -> LedgerRow:
    return LedgerRow(f"r{n}", 1, "p", "p/a", "ok", 10, 5,
                     cost=None if cost is None else Decimal(cost), scopes=("global",), at=at)


async def assert_prune_keeps_budgets(backend: Any) -> None:
    """Rows settled and recorded on both sides of :data:`CUTOFF`; ``prune(CUTOFF)`` deletes
    exactly the older ones (one a microsecond before, none at the cut-off), returns their
    number, and committed spend stays what it was; pruning again deletes nothing."""
    assert isinstance(backend, LedgerPruning)
    old = [row(i, CUTOFF - timedelta(days=40 - i)) for i in range(5)]
    old.append(row(5, CUTOFF - timedelta(microseconds=1), cost=None))
    new = [row(10, CUTOFF), row(11, CUTOFF + timedelta(days=3), cost="0.5")]
    for r in (old[0], new[1]):  # two rows written by settle itself
        reservation = await backend.reserve([CHARGE], Decimal("1"), ttl=60)
        await backend.settle(reservation, r.cost, ledger=r)
    await backend.record([r for r in old + new if r not in (old[0], new[1])])
    (before,) = await backend.usage([CHARGE])
    assert before.committed == Decimal("0.51")

    assert await backend.prune(CUTOFF) == len(old)
    assert sorted(r.request_id for r in await backend.rows()) == ["r10", "r11"]
    (after,) = await backend.usage([CHARGE])
    assert after.committed == before.committed  # spend stays; only ledger rows go
    assert await backend.prune(CUTOFF) == 0


async def assert_prune_in_batches(backend: Any, count: Callable[[], list[str]],
                                  caplog: pytest.LogCaptureFixture, logger: str) -> None:
    """25 old rows and a new one recorded, then ``count()`` patches the backend's prune batch
    to 10 and returns the list its transactions will append their operation names to: the
    old rows go in 3 transactions (10 + 10 + 5), ``logger`` logs their number and cost, and
    the new row stays."""
    await backend.record([attempt(i, NOW - timedelta(days=100, seconds=i)) for i in range(25)])
    await backend.record([attempt(100, NOW)])
    transactions = count()
    with caplog.at_level(logging.INFO, logger):
        assert await backend.prune(NOW - timedelta(days=1)) == 25
    assert transactions == ["prune"] * 3
    assert "pruned 25 ledger row(s)" in caplog.text and "costing 0.025 USD" in caplog.text
    assert [r.request_id for r in await backend.rows()] == ["r100"]


async def assert_reconcile_applies_retention_days(make: Callable[..., Any], **keep_all: Any) -> None:
    """``make(clock=..., ledger_retention_days=30)`` at :data:`NOW`: reconcile deletes the rows
    older than 30 days (one written by a settlement) and keeps the spend; ``make(**keep_all)``
    (retention unset) keeps every row, however old."""
    b = make(clock=lambda: NOW.timestamp(), ledger_retention_days=30)
    await b.record([attempt(1, NOW - timedelta(days=31)), attempt(2, NOW - timedelta(days=29)),
                    attempt(3, NOW)])
    r = await b.reserve([GLOBAL], Decimal("1"), ttl=60)
    await b.settle(r, Decimal("0.5"), ledger=attempt(4, NOW - timedelta(days=45)))
    assert await b.reconcile() == 0  # leases released: none; the old rows went
    assert [row.request_id for row in await b.rows()] == ["r2", "r3"]
    (u,) = await b.usage([GLOBAL])
    assert u.committed == Decimal("0.5")
    keep_all_rows = make(**keep_all)
    await keep_all_rows.record([attempt(5, NOW - timedelta(days=3650))])
    await keep_all_rows.reconcile()
    assert len(await keep_all_rows.rows()) == 3


def assert_retention_option_is_validated(options_type: type, **required: Any) -> None:
    """``ledger_retention_days``: unset by default, a whole number of days >= 1, else a
    ConfigError naming ``budget.options.ledger_retention_days``."""
    assert structure_options(required, options_type, field="budget.options"
                             ).ledger_retention_days is None  # type: ignore[union-attr]
    ok = structure_options({**required, "ledger_retention_days": 30}, options_type,
                           field="budget.options")
    assert ok.ledger_retention_days == 30  # type: ignore[union-attr]
    # 800,000 days put the cut-off before year 1: every start-up raised OverflowError
    for bad in (0, -3, 1.5, "30", True, 800_000, 10**9):
        with pytest.raises(ConfigError) as info:
            structure_options({**required, "ledger_retention_days": bad}, options_type,
                              field="budget.options")
        assert str(info.value).startswith("budget.options.ledger_retention_days: ")
