"""Behaviour beyond the conformance suite: money in nano-USD, leases with frozen clocks,
cancellation, durability across instances, threads, and options validation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models.config import structure_options
from squirrel_models.errors import BudgetExceeded, ConfigError
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions, from_nanos, to_nanos

from tests.support import ledger_summaries

pytestmark = pytest.mark.anyio

Make = Callable[..., SqliteBudgetBackend]
GLOBAL = Charge("global", "total", "total", Decimal("1"))


def test_nanos_round_up_and_limits_round_down() -> None:
    assert to_nanos(Decimal("0.1")) == 100_000_000
    assert to_nanos(Decimal("1E-10")) == 1
    assert to_nanos(Decimal("0.0000000011")) == 2
    assert to_nanos(Decimal("0.0000000019"), up=False) == 1
    assert from_nanos(1) == Decimal("1E-9")
    with pytest.raises(ValueError, match=">= 0"):
        to_nanos(Decimal("-1"))


async def test_sub_nano_amounts_are_reserved_and_settled_up(make_backend: Make) -> None:
    b = make_backend()
    c = Charge("global", "total", "total", Decimal("0.000000002"))
    r = await b.reserve([c], Decimal("0.0000000001"), ttl=60)  # rounds up to 1 nano
    await b.settle(r, Decimal("0.00000000101"))  # rounds up to 2 nano
    (u,) = await b.usage([c])
    assert u.committed == Decimal("0.000000002")
    with pytest.raises(BudgetExceeded):
        await b.reserve([c], Decimal("0.0000000001"), ttl=60)


async def test_spend_survives_reopening(make_backend: Make) -> None:
    b1 = make_backend()
    r = await b1.reserve([GLOBAL], Decimal("0.5"), ttl=60)
    await b1.settle(r, Decimal("0.25"))
    held = await b1.reserve([GLOBAL], Decimal("0.5"), ttl=60)
    await b1.aclose()
    b2 = make_backend()
    (u,) = await b2.usage([GLOBAL])
    assert (u.committed, u.reserved) == (Decimal("0.25"), Decimal("0.5"))
    assert await b2.settle(held, Decimal("0.5")) == 0  # a reservation settles from any instance
    (u,) = await b2.usage([GLOBAL])
    assert (u.committed, u.reserved) == (Decimal("0.75"), Decimal(0))


async def test_reserve_expires_stale_leases_lazily(make_backend: Make) -> None:
    now = [1_000.0]
    b = make_backend(clock=lambda: now[0])
    stale = await b.reserve([GLOBAL], Decimal("0.9"), ttl=10)
    with pytest.raises(BudgetExceeded):
        await b.reserve([GLOBAL], Decimal("0.5"), ttl=10)
    now[0] += 10
    r = await b.reserve([GLOBAL], Decimal("0.5"), ttl=10)  # no reconcile() needed
    assert (await b.audit())["expired"] == 1
    await b.settle(stale, Decimal("0.2"))  # a late settle commits, once
    await b.settle(stale, Decimal("0.2"))
    await b.release(r)
    (u,) = await b.usage([GLOBAL])
    assert (u.committed, u.reserved) == (Decimal("0.2"), Decimal(0))
    assert await b.audit() == {"open": 0, "expired": 0, "mismatched": []}


async def test_a_refused_reserve_still_keeps_the_expiry_it_did(make_backend: Make) -> None:
    now = [0.0]
    b = make_backend(clock=lambda: now[0])
    await b.reserve([GLOBAL], Decimal("0.5"), ttl=1)
    now[0] = 5
    with pytest.raises(BudgetExceeded):
        await b.reserve([GLOBAL], Decimal("2"), ttl=1)
    assert (await b.audit())["open"] == 0


async def test_usage_returns_expired_headroom(make_backend: Make) -> None:
    now = [0.0]
    b = make_backend(clock=lambda: now[0])
    await b.reserve([GLOBAL], Decimal("0.5"), ttl=1)
    now[0] = 2
    (u,) = await b.usage([GLOBAL])
    assert u.reserved == 0


async def test_reconcile_forgets_old_expired_leases(make_backend: Make) -> None:
    now = [0.0]
    b = make_backend(clock=lambda: now[0], expired_retention_s=100)
    r = await b.reserve([GLOBAL], Decimal("0.5"), ttl=1)
    now[0] = 50
    assert await b.reconcile() == 1
    assert (await b.audit())["expired"] == 1
    now[0] = 200
    assert await b.reconcile() == 0
    assert (await b.audit())["expired"] == 0
    assert await b.settle(r, Decimal("0.1")) == 0  # too late: documented retention
    (u,) = await b.usage([GLOBAL])
    assert u.committed == 0


async def test_cancelled_reserve_holds_nothing(make_backend: Make) -> None:
    b = make_backend()
    await b.open()
    for _ in range(20):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await b.reserve([GLOBAL], Decimal("0.1"), ttl=600)
    assert (await b.audit())["open"] == 0
    (u,) = await b.usage([GLOBAL])
    assert u.reserved == 0


async def test_two_limits_on_one_bucket_count_once(make_backend: Make) -> None:
    b = make_backend()
    loose, tight = Charge("key:t", "day", "2026-11-26", Decimal("5")), Charge(
        "key:t", "day", "2026-11-26", Decimal("1"))
    r = await b.reserve([loose, tight], Decimal("0.6"), ttl=60)
    with pytest.raises(BudgetExceeded):
        await b.reserve([loose, tight], Decimal("0.6"), ttl=60)
    await b.settle(r, Decimal("0.6"))
    u = await b.usage([loose])
    assert u[0].committed == Decimal("0.6")


async def test_threads_with_their_own_loops_share_the_budget(make_backend: Make) -> None:
    """Several threads, each running its own event loop and backend on one file."""
    limit = Decimal("1.00")
    c = Charge("global", "total", "total", limit)
    backends = [make_backend(connections=mode) for mode in ("shared", "per_thread") * 2]
    for b in backends:
        await b.open()
    peaks: list[Decimal] = []
    errors: list[BaseException] = []

    def run(b: SqliteBudgetBackend) -> None:
        async def go() -> None:
            for _ in range(60):
                try:
                    r = await b.reserve([c], Decimal("0.07"), ttl=60)
                except BudgetExceeded:
                    continue
                (u,) = await b.usage([c])
                peaks.append(u.committed + u.reserved)
                await b.settle(r, Decimal("0.01"))
        try:
            anyio.run(go)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        await anyio.to_thread.run_sync(t.join)
    assert errors == []
    assert max(peaks) <= limit
    (u,) = await backends[0].usage([c])
    assert u.committed == Decimal("0.01") * len(peaks)
    assert u.reserved == 0


async def test_many_backends_create_one_new_file_at_once(make_backend: Make) -> None:
    backends = [make_backend() for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for b in backends:
            tg.start_soon(b.open)
    r = await backends[3].reserve([GLOBAL], Decimal("0.5"), ttl=60)
    (u,) = await backends[5].usage([GLOBAL])
    assert u.reserved == Decimal("0.5")
    await backends[0].release(r)


async def test_closed_backend_refuses_work(make_backend: Make) -> None:
    from squirrel_models.errors import SquirrelError

    b = make_backend()
    await b.usage([GLOBAL])
    await b.aclose()
    with pytest.raises(SquirrelError, match="closed"):
        await b.usage([GLOBAL])


@pytest.mark.parametrize(("options", "field"), [
    ({}, "budget.options.path"),
    ({"path": ""}, "budget.options.path"),
    ({"path": "x.db", "busy_timeout_s": 0}, "budget.options.busy_timeout_s"),
    ({"path": "x.db", "synchronous": "OFF"}, "budget.options.synchronous"),
    ({"path": "x.db", "connections": "pool"}, "budget.options.connections"),
    ({"path": "x.db", "bogus": 1}, "budget.options"),
])
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        structure_options(options, SqliteBudgetOptions, field="budget.options")
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("seed", range(5))
async def test_summarize_in_sql_equals_the_reference(make_backend: Make, seed: int) -> None:
    """``summarize`` aggregated by SQLite equals ``ledger.summarize`` over ``rows()``: random
    ledgers (outcomes, unknown costs, several scopes and days, fallbacks), every grouping and
    window, down to the Decimal exponents and the rendered table, JSON and CSV."""
    await ledger_summaries.assert_summaries_match(make_backend(), seed)


async def test_summarize_refuses_an_unknown_grouping(make_backend: Make) -> None:
    with pytest.raises(ValueError, match="cannot group by"):
        await make_backend().summarize("week")
