"""Budgets never overspend: the in-memory backend's contract, scopes, periods, and random
interleavings of reserve, settle, release and cancellation (hypothesis)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, BudgetExceeded, BudgetLimit, Charge
from squirrel_models.budget import bucket_for, charges_for
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.testing import Fail, Reply, StreamReply
from squirrel_models.testing.conformance import BudgetBackendConformance

from .helpers import card, provider

pytestmark = pytest.mark.anyio


class TestMemoryBackend(BudgetBackendConformance):
    @pytest.fixture
    def backend(self):
        return MemoryBudgetBackend()


def test_buckets_are_calendar_utc() -> None:
    t = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert bucket_for("day", t) == "2026-12-31"
    assert bucket_for("month", t) == "2026-12"
    assert bucket_for("total", t) == "total"


def test_charges_match_scopes() -> None:
    limits = [BudgetLimit("global", "day", limit=Decimal(5)), BudgetLimit("provider:p", "total", limit=Decimal(1)),
              BudgetLimit("provider:q", "total", limit=Decimal(1)), BudgetLimit("model:p/a", "month", limit=Decimal(2)),
              BudgetLimit("key:*", "day", limit=Decimal("0.5")), BudgetLimit("key:vip", "day", limit=Decimal(50))]
    now = datetime(2026, 11, 26, tzinfo=UTC)
    got = charges_for(limits, provider="p", model_id="p/a", budget_key="team", now=now)
    assert [(c.scope, c.bucket) for c in got] == [
        ("global", "2026-11-26"), ("provider:p", "total"), ("model:p/a", "2026-11"),
        ("key:team", "2026-11-26")]
    got = charges_for(limits, provider="q", model_id="q/b", budget_key="vip", now=now)
    # key:* and key:vip share a scope and bucket: one charge, the tighter limit
    assert [(c.scope, c.limit) for c in got] == [
        ("global", Decimal(5)), ("provider:q", Decimal(1)), ("key:vip", Decimal("0.5"))]
    assert charges_for(limits, provider="q", model_id="q/b", budget_key=None, now=now)[-1].scope == "provider:q"


class CheckingBackend(MemoryBudgetBackend):
    """The in-memory backend, asserting after every operation that committed + reserved stays
    within the limit, give or take overspend the providers reported (recorded, never hidden)."""

    overspent: Decimal = Decimal(0)

    def check(self, charges) -> None:
        for c in charges:
            key = (c.scope, c.bucket)
            total = self._committed[key] + self._reserved[key]
            assert self._reserved[key] >= 0
            assert total <= c.limit + self.overspent, (key, total, c.limit)

    async def reserve(self, charges, amount, *, ttl, request_id=""):
        r = await super().reserve(charges, amount, ttl=ttl, request_id=request_id)
        self.check(charges)
        return r

    async def settle(self, reservation, amount):
        over = await super().settle(reservation, amount)
        self.overspent += over
        self.check(reservation.charges)
        return over

    async def release(self, reservation):
        await super().release(reservation)
        self.check(reservation.charges)


ops = st.lists(st.tuples(
    st.integers(1, 40),                                      # amount in cents
    st.sampled_from(["settle", "release", "cancel", "over"]),
    st.integers(0, 3),                                        # yields before finishing
), min_size=1, max_size=40)


@pytest.mark.parametrize("backend_name", ["asyncio", "trio"])
@given(plan=ops, limit=st.integers(1, 200))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_interleavings_never_overspend(backend_name, plan, limit) -> None:
    backend = CheckingBackend()
    charge = Charge("global", "total", "total", Decimal(limit) / 100)
    spent: list[Decimal] = []

    async def task(amount: int, action: str, yields: int) -> None:
        amt = Decimal(amount) / 100
        try:
            r = await backend.reserve([charge], amt, ttl=60)
        except BudgetExceeded:
            return
        try:
            with anyio.CancelScope() as scope:
                for _ in range(yields):
                    await anyio.lowlevel.checkpoint()
                if action == "cancel":
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()  # cancelled here, mid-attempt
                await finish(r, amt, action)
        finally:
            with anyio.CancelScope(shield=True):
                await backend.release(r)  # a no-op after settle: release is idempotent

    async def finish(r, amt: Decimal, action: str) -> None:
        if action == "settle":
            actual = amt * Decimal(random.Random(str(amt)).randint(0, 100)) / 100
            await backend.settle(r, actual)
            spent.append(actual)
        elif action == "over":  # the provider reported more than reserved: still recorded
            await backend.settle(r, amt * 2)
            spent.append(amt * 2)
        else:
            await backend.release(r)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for amount, action, yields in plan:
                tg.start_soon(task, amount, action, yields)
        (u,) = await backend.usage([charge])
        assert u.reserved == 0
        assert u.committed == sum(spent, Decimal(0))
        assert backend.open_reservations == 0

    anyio.run(main, backend=backend_name)


async def test_many_concurrent_requests_never_overspend(squirrel_manager) -> None:
    """Through the manager: 300 concurrent requests with failures, hangs cut by deadlines,
    cancellations and broken streams against a budget that admits only some of them."""
    p = provider("p", card("a", price=("1000", "1000")), card("b", price=("2000", "2000")))
    rng = random.Random(1)
    for name in ("a", "b"):
        p.script(name, *[rng.choice([
            Reply("ok fine", delay=rng.random() / 100),
            Fail(__import__("squirrel_models").ServerError("x", status_code=500)),
            StreamReply(("x ", "y ", "z"), fail_after=rng.choice([None, 1])),
            Reply("slow", delay=1.0),
        ]) for _ in range(400)])
    backend = CheckingBackend()
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "0.5"}]},
           "fallback": {"options": {"retry": {"base_delay": 0.001}}}, "timeout": 2.0}
    costs: list[Decimal] = []
    async with squirrel_manager(cfg, budget_backend=backend) as mm:
        for c in p.models:
            mm.register_model(c, p)

        async def one(i: int) -> None:
            req = AIRequest.from_prompt(f"request {i}", max_tokens=20)
            with anyio.move_on_after(rng.choice([0.01, 0.05, 5])):
                try:
                    if i % 2:
                        r = await mm.complete(req)
                        costs.append(r.cost)
                    else:
                        async with mm.stream(req) as s:
                            async for _ in s:
                                pass
                        costs.append(s.response.cost)
                except Exception:
                    pass

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert u.reserved == 0
    assert backend.open_reservations == 0
    assert u.committed <= Decimal("0.5")
    assert costs, "some requests must have fitted the budget"
    assert u.committed >= sum(costs, Decimal(0))  # successes, plus partial charges of broken streams


async def test_memory_ledger_keeps_the_latest_rows() -> None:
    """The in-memory ledger is bounded (it is the default backend of long-running processes):
    past ``max_ledger_rows`` the oldest rows go first, and budgets are unaffected."""
    from squirrel_models.budget import LedgerRow
    from squirrel_models.builtins.memory_budget import MAX_LEDGER_ROWS

    assert MemoryBudgetBackend().max_ledger_rows == MAX_LEDGER_ROWS == 10_000
    b = MemoryBudgetBackend(max_ledger_rows=3)
    charge = Charge("global", "total", "total", Decimal(10))
    r = await b.reserve([charge], Decimal(1), ttl=60)
    await b.settle(r, Decimal(1))
    for i in range(5):
        await b.record([LedgerRow(f"r{i}", 1, "p", "p/a", "ok")])
    assert [row.request_id for row in await b.rows()] == ["r2", "r3", "r4"]
    assert (await b.usage([charge]))[0].committed == Decimal(1)
    none = MemoryBudgetBackend(max_ledger_rows=0)
    await none.record([LedgerRow("r", 1, "p", "p/a", "ok")])
    assert await none.rows() == []


async def test_memory_ledger_bound_is_configurable(squirrel_manager) -> None:
    p = provider("p", card("a", price=("1", "1")))
    p.default = Reply("ok")
    async with squirrel_manager({"budget": {"options": {"max_ledger_rows": 2}}}) as mm:
        mm.register_model(p.models[0], p)
        assert mm.budget_backend.max_ledger_rows == 2
        for i in range(4):
            await mm.complete(AIRequest.from_prompt(f"q{i}"))
        rows = await mm.budget_backend.rows()
        assert len(rows) == 2 and rows[-1].request_id != rows[0].request_id


@pytest.mark.parametrize("bad", [-1, "many", 1.5, True])
def test_memory_ledger_bound_is_checked(bad) -> None:
    from squirrel_models import ConfigError, ModelManager

    with pytest.raises(ConfigError) as info:
        ModelManager({"budget": {"options": {"max_ledger_rows": bad}}})
    assert "budget.options.max_ledger_rows" in str(info.value)
