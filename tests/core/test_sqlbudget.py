"""What the SQL budget backends share: nano-USD rounding, bucket keys, refusals, cancellation
around reserve, and the ledger row as plain values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from squirrel_models.budget import Charge, LedgerRow, Reservation
from squirrel_models.errors import BudgetExceeded, ConfigError
from squirrel_models.sqlbudget import (
    MAX_NANOS,
    BucketKey,
    Refusal,
    bucket_keys,
    from_nanos,
    ledger_row,
    ledger_values,
    one_of,
    positive,
    reserve_shielded,
    to_nanos,
)


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False, places=12))
def test_rounding_never_undercounts_spend_nor_overstates_limits(amount: Decimal) -> None:
    assert from_nanos(to_nanos(amount)) >= amount
    assert from_nanos(to_nanos(amount, up=False)) <= amount
    assert to_nanos(amount) - to_nanos(amount, up=False) in (0, 1)


def test_bad_amounts() -> None:
    for bad in (Decimal(-1), Decimal("NaN"), Decimal("Infinity"), from_nanos(MAX_NANOS + 1)):
        with pytest.raises(ValueError):
            to_nanos(bad)


def test_bucket_keys_keep_charge_order_and_the_tightest_limit() -> None:
    keys = bucket_keys([Charge("key:t", "day", "2026-11-26", Decimal(2)),
                        Charge("global", "total", "total", Decimal(5)),
                        Charge("key:t", "day", "2026-11-26", Decimal(1))])
    assert keys == [BucketKey("key:t", "2026-11-26", 10**9), BucketKey("global", "total", 5 * 10**9)]
    assert sorted(keys)[0].scope == "global"


def test_bucket_keys_read_a_non_finite_limit_as_max_nanos_only_when_unbounded() -> None:
    charges = [Charge("global", "total", "total", Decimal("Infinity")),
               Charge("key:t", "total", "total", Decimal("Infinity")),
               Charge("global", "total", "total", Decimal(3))]
    assert bucket_keys(charges, unbounded=True) == [BucketKey("global", "total", 3 * 10**9),
                                                     BucketKey("key:t", "total", MAX_NANOS)]
    with pytest.raises(ValueError, match="limit must be a finite amount"):
        bucket_keys(charges)
    for bad in ("NaN", "-Infinity"):  # never "no limit"
        with pytest.raises(ValueError, match="limit must be a finite amount"):
            bucket_keys([Charge("key:t", "total", "total", Decimal(bad))], unbounded=True)
    with pytest.raises(ValueError, match=r"limit .* is too large"):
        bucket_keys([Charge("global", "total", "total", from_nanos(MAX_NANOS + 1))], unbounded=True)


def test_refusal_becomes_budget_exceeded() -> None:
    err = Refusal("global", "total", 10**9, 6 * 10**8, 3 * 10**8).error(Decimal("0.2"))
    assert isinstance(err, BudgetExceeded)
    assert (err.scope, err.limit, err.committed, err.reserved) == (
        "global", Decimal(1), Decimal("0.6"), Decimal("0.3"))


def test_ledger_values_round_trip() -> None:
    row = LedgerRow("r", 2, "p", "p/m", "ok", 5, 6, 1, 2, Decimal("0.0000000001"), None, 0.5,
                    ("global",), datetime(2026, 11, 26, tzinfo=UTC), "estimated")
    values = ledger_values(row)
    assert values[10] == 1 and values[13] == ["global"]
    assert ledger_row(values) == attrs.evolve(row, cost=Decimal("1E-9"))
    naive = attrs.evolve(row, at=datetime(2026, 11, 26))
    assert ledger_values(naive)[0] == row.at


@pytest.mark.anyio
async def test_reserve_shielded_undoes_a_reservation_made_while_cancelled() -> None:
    undone: list[str] = []
    r = Reservation("x", Decimal(1), (), 0.0)

    async def make() -> Reservation:
        await anyio.sleep(0.05)
        return r

    async def undo(res: Reservation) -> None:
        undone.append(res.id)

    with anyio.move_on_after(0.01) as scope:
        await reserve_shielded(make, undo)
    assert scope.cancelled_caught and undone == ["x"]
    assert await reserve_shielded(make, undo) is r and undone == ["x"]


def test_validators_name_the_field() -> None:
    @attrs.frozen
    class Opts:
        timeout: float = attrs.field(default=1.0, validator=positive)
        mode: str = attrs.field(default="a", validator=one_of("a", "b"))

    with pytest.raises(ConfigError) as info:
        Opts(timeout=0)
    assert info.value.field == "timeout"
    with pytest.raises(ConfigError, match="one of a, b"):
        Opts(mode="c")
