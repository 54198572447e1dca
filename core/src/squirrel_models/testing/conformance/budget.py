"""The conformance suite of budget backends: :class:`BudgetBackendConformance`."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import anyio
import attrs
import pytest

from ...budget import (
    BudgetBackend,
    Charge,
    LedgerBackend,
    LedgerPruning,
    LedgerRow,
    SettlesWithLedger,
    settles_with_ledger,
)
from ...errors import BudgetExceeded

__all__ = ["BudgetBackendConformance"]


class BudgetBackendConformance:
    """Checks the budget backend contract of :mod:`squirrel_models.budget`.

    Provide a ``backend`` fixture yielding a fresh, empty backend. The ``ledger_*`` tests
    run only for a backend that declares ``settles_with_ledger = True``; ``ledger_prune``
    also needs ``prune`` (:class:`~squirrel_models.budget.LedgerPruning`).
    """

    def charge(self, scope: str = "global", limit: str = "1.00", bucket: str = "total"
               ) -> Charge:
        return Charge(scope, "total" if bucket == "total" else "day", bucket, Decimal(limit))

    async def test_reserve_within_limit(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.40"), ttl=60)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal(0), Decimal("0.40"))
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert u.reserved == 0

    async def test_reserve_beyond_limit_refused(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="0.50")
        await backend.reserve([c], Decimal("0.30"), ttl=60)
        with pytest.raises(BudgetExceeded) as info:
            await backend.reserve([c], Decimal("0.30"), ttl=60)
        assert info.value.scope == "global"
        (u,) = await backend.usage([c])
        assert u.reserved == Decimal("0.30")

    async def test_reserve_is_all_or_nothing(self, backend: BudgetBackend) -> None:
        roomy, tight = self.charge("global", "10"), self.charge("key:team", "0.10")
        with pytest.raises(BudgetExceeded) as info:
            await backend.reserve([roomy, tight], Decimal("0.20"), ttl=60)
        assert info.value.scope == "key:team"
        u = await backend.usage([roomy, tight])
        assert [x.reserved for x in u] == [0, 0]

    async def test_a_reservation_may_fill_the_limit_exactly(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="1.00")
        r = await backend.reserve([c], Decimal("0.25"), ttl=60)
        await backend.settle(r, Decimal("0.25"))
        try:
            await backend.reserve([c], Decimal("0.75"), ttl=60)
        except BudgetExceeded:
            raise AssertionError("a reservation that fills the limit exactly (committed + reserved "
                                 "== limit) must be granted") from None
        with pytest.raises(BudgetExceeded):
            await backend.reserve([c], Decimal("0.000001"), ttl=60)

    async def test_release_frees_and_commits_nothing(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="1.00")
        r = await backend.reserve([c], Decimal("0.60"), ttl=60)
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal(0), Decimal(0)), \
            "release must free the reservation and commit nothing (the attempt used nothing)"
        await backend.release(await backend.reserve([c], Decimal("1.00"), ttl=60))

    async def test_settle_commits_on_every_scope(self, backend: BudgetBackend) -> None:
        everyone, team = self.charge("global", "10"), self.charge("key:team", "1.00")
        r = await backend.reserve([everyone, team], Decimal("0.50"), ttl=60)
        await backend.settle(r, Decimal("0.40"))
        u = await backend.usage([everyone, team])
        assert [(x.committed, x.reserved) for x in u] == [(Decimal("0.40"), Decimal(0))] * 2, \
            "settle must commit the amount on every scope of the reservation and free it on each"

    async def test_settle_commits_actual(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.50"), ttl=60)
        over = await backend.settle(r, Decimal("0.20"))
        assert over == 0
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.20"), Decimal(0))

    async def test_overspend_is_recorded_in_full(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.10"), ttl=60)
        over = await backend.settle(r, Decimal("0.15"))
        assert over == Decimal("0.05")
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.15")

    async def test_settle_and_release_are_idempotent(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60)
        await backend.settle(r, Decimal("0.10"))
        await backend.settle(r, Decimal("0.10"))
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.10"), Decimal(0))
        r2 = await backend.reserve([c], Decimal("0.30"), ttl=60)
        await backend.release(r2)
        await backend.release(r2)
        (u,) = await backend.usage([c])
        assert u.reserved == 0

    async def test_zero_price_reserves_zero(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="0")
        r = await backend.reserve([c], Decimal(0), ttl=60)
        await backend.settle(r, Decimal(0))
        (u,) = await backend.usage([c])
        assert u.committed == 0

    async def test_expired_lease_returns_headroom(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="1")
        r = await backend.reserve([c], Decimal("0.90"), ttl=0.05)
        await anyio.sleep(0.15)
        assert await backend.reconcile() >= 1
        (u,) = await backend.usage([c])
        assert u.reserved == 0
        # A late settle still commits what was spent (never hidden), once.
        await backend.settle(r, Decimal("0.30"))
        await backend.settle(r, Decimal("0.30"))
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.30")

    async def test_buckets_are_separate(self, backend: BudgetBackend) -> None:
        d1, d2 = self.charge(bucket="2026-11-25"), self.charge(bucket="2026-11-26")
        r = await backend.reserve([d1], Decimal("0.90"), ttl=60)
        await backend.settle(r, Decimal("0.90"))
        await backend.reserve([d2], Decimal("0.90"), ttl=60)
        u1, u2 = await backend.usage([d1, d2])
        assert (u1.committed, u2.reserved) == (Decimal("0.90"), Decimal("0.90"))

    async def test_concurrent_reservations_never_overspend(self, backend: BudgetBackend
                                                           ) -> None:
        c = self.charge(limit="1.00")
        rng = random.Random(7)
        granted: list[Any] = []
        peak = Decimal(0)

        async def worker(i: int) -> None:
            nonlocal peak
            amount = Decimal(rng.randint(1, 30)) / 100
            try:
                r = await backend.reserve([c], amount, ttl=60, request_id=f"r{i}")
            except BudgetExceeded:
                return
            (u,) = await backend.usage([c])
            peak = max(peak, u.committed + u.reserved)
            await anyio.sleep(rng.random() / 100)
            if rng.random() < 0.5:
                await backend.settle(r, amount * rng.randint(0, 100) / 100)
            else:
                await backend.release(r)
            granted.append(r)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(worker, i)
        (u,) = await backend.usage([c])
        assert peak <= c.limit
        assert u.reserved == 0
        assert u.committed <= c.limit
        assert granted

    async def test_usage_of_unknown_bucket_is_zero(self, backend: BudgetBackend) -> None:
        c = Charge("model:x/y", "month", datetime.now(UTC).strftime("%Y-%m"), Decimal(5))
        (u,) = await backend.usage([c])
        assert u.committed == 0
        assert u.reserved == 0
        assert u.limit == Decimal(5)

    # --- settle with its ledger row (settles_with_ledger = True) ----------------------------

    def ledger_row(self, request_id: str, cost: str, attempt: int = 1) -> LedgerRow:
        return LedgerRow(request_id, attempt, "p", "p/m", "ok", 120, 30, cost=Decimal(cost),
                         latency_s=0.25, scopes=("global",))

    async def _rows_of(self, backend: BudgetBackend, request_id: str) -> list[LedgerRow]:
        if not settles_with_ledger(backend):
            pytest.skip("the backend does not declare settles_with_ledger = True")
        rows = await cast(LedgerBackend, backend).rows()
        return [r for r in rows if r.request_id == request_id]

    async def test_ledger_settle_writes_spend_and_row_once(self, backend: BudgetBackend
                                                           ) -> None:
        """A settle with a ledger row commits the spend and writes the row, both once: a
        repeated settle (a retry after a lost reply, say) writes no second row."""
        await self._rows_of(backend, "req-settle")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.50"), ttl=60, request_id="req-settle")
        row = self.ledger_row("req-settle", "0.123456789")
        over = await cast(SettlesWithLedger, backend).settle(r, Decimal("0.123456789"), ledger=row)
        assert over == 0
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.123456789"), Decimal(0))
        (got,) = await self._rows_of(backend, "req-settle")
        assert (got.attempt, got.provider, got.model, got.outcome, got.input_tokens,
                got.output_tokens, got.cost, got.scopes) == (
            1, "p", "p/m", "ok", 120, 30, Decimal("0.123456789"), ("global",))
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.123456789"), ledger=row)
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.123456789")
        assert len(await self._rows_of(backend, "req-settle")) == 1

    async def test_ledger_settle_of_released_reservation_writes_nothing(
            self, backend: BudgetBackend) -> None:
        """The row goes with the spend: a settle that commits nothing writes no row."""
        await self._rows_of(backend, "req-released")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60, request_id="req-released")
        await backend.release(r)
        await cast(SettlesWithLedger, backend).settle(
            r, Decimal("0.10"), ledger=self.ledger_row("req-released", "0.10"))
        (u,) = await backend.usage([c])
        assert u.committed == 0
        assert await self._rows_of(backend, "req-released") == []

    async def test_ledger_settle_without_row_writes_none(self, backend: BudgetBackend) -> None:
        await self._rows_of(backend, "req-plain")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60, request_id="req-plain")
        await backend.settle(r, Decimal("0.10"))
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.10"), ledger=None)
        assert await self._rows_of(backend, "req-plain") == []

    async def test_ledger_late_settle_after_expiry_writes_row_once(self, backend: BudgetBackend
                                                                   ) -> None:
        """A settle after the lease expired still commits its spend, and its row, once."""
        await self._rows_of(backend, "req-late")
        c = self.charge(limit="1")
        r = await backend.reserve([c], Decimal("0.90"), ttl=0.05, request_id="req-late")
        await anyio.sleep(0.15)
        assert await backend.reconcile() >= 1
        row = self.ledger_row("req-late", "0.30", attempt=2)
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.30"), ledger=row)
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.30"), ledger=row)
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.30")
        (got,) = await self._rows_of(backend, "req-late")
        assert (got.attempt, got.cost) == (2, Decimal("0.30"))

    async def test_ledger_prune_keeps_committed_spend(self, backend: BudgetBackend) -> None:
        """``prune(before)`` deletes the rows older than ``before`` only, returns how many, and
        never touches committed spend."""
        await self._rows_of(backend, "req-prune-old")
        if not isinstance(backend, LedgerPruning):
            pytest.skip("the backend has no prune")
        c = self.charge()
        cutoff = datetime(2021, 1, 1, tzinfo=UTC)
        for rid, at in (("req-prune-old", datetime(2020, 6, 1, tzinfo=UTC)),
                        ("req-prune-new", datetime.now(UTC))):
            r = await backend.reserve([c], Decimal("0.20"), ttl=60, request_id=rid)
            row = attrs.evolve(self.ledger_row(rid, "0.10"), at=at)
            await cast(SettlesWithLedger, backend).settle(r, Decimal("0.10"), ledger=row)
        assert await backend.prune(cutoff) == 1
        assert await self._rows_of(backend, "req-prune-old") == []
        assert len(await self._rows_of(backend, "req-prune-new")) == 1
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.20"), Decimal(0))
        assert await backend.prune(cutoff) == 0

    # --- leased slices (squirrel_models.slices) -------------------------------------------

    @pytest.fixture
    def sliced(self) -> Callable[..., BudgetBackend] | None:
        """Override for a backend that serves leased slices: ``make(clock, **options)``
        returns a fresh, unopened backend on one store shared by every backend it makes (each
        one a "process"), dating leases by ``clock`` (seconds since the epoch), with the
        ``slices`` and ``slice_*`` options given (none: slices off). None (the default): the
        slice checks are skipped."""
        return None

    async def test_a_stalled_slice_gives_back_the_room_it_never_used(
            self, sliced: Callable[..., BudgetBackend] | None) -> None:
        """A process that stalls past its slice's lease: the store charges the slice in full
        (what it spent unflushed may be any of it); when the process wakes, its late flush
        writes its rows within that charge and learns that the slice expired, its next flush
        says what it still holds there (a reservation in flight), and the store gives the
        rest back. ``committed + reserved <= limit`` at every step, the ledger's costs equal
        committed, and the room the process never used is free again for the others."""
        if sliced is None:
            pytest.skip("the backend serves no leased slices (no `sliced` fixture)")
        now = [1_900_000_000.0]
        lease_s = 4000.0
        stalled = sliced(lambda: now[0], slices=True, slice_flush_s=1000.0, slice_lease_s=lease_s)
        other, checker = sliced(lambda: now[0]), sliced(lambda: now[0])
        c = self.charge("key:stall", limit="1")
        spent: dict[str, Decimal] = {}

        async def settle(backend: BudgetBackend, r: Any, amount: str) -> None:
            spent[r.request_id] = Decimal(amount)
            row = attrs.evolve(self.ledger_row(r.request_id, amount), scopes=("key:stall",))
            await cast(SettlesWithLedger, backend).settle(r, Decimal(amount), ledger=row)

        async def totals() -> tuple[Decimal, Decimal]:
            (u,) = await checker.usage([c])
            assert u.committed + u.reserved <= c.limit, u
            rows = await cast(LedgerBackend, checker).rows()
            assert sum(r.cost or 0 for r in rows if "key:stall" in r.scopes) == u.committed
            return u.committed, u.reserved

        live = [stalled, other, checker]
        for b in live:
            opening = getattr(b, "open", None)
            if opening is not None:
                await opening()
        try:
            if not settles_with_ledger(stalled):
                pytest.skip("the backend does not declare settles_with_ledger = True")
            await settle(stalled, await stalled.reserve([c], Decimal("0.10"), ttl=86400,
                                                        request_id="spent"), "0.10")
            flight = await stalled.reserve([c], Decimal("0.05"), ttl=86400, request_id="flight")
            committed, room = await totals()  # the slice: nothing flushed yet
            assert committed == 0 and room >= Decimal("0.15")
            now[0] += lease_s + 1
            assert await other.reconcile() >= 1
            assert await totals() == (room, Decimal(0))  # charged in full
            await cast(Any, stalled).flush_slices()  # it wakes: the late flush
            assert await totals() == (room, Decimal(0))  # its row is within the charge: counted once
            await cast(Any, stalled).flush_slices()  # it says what it holds in the slice
            assert await totals() == (Decimal("0.15"), Decimal(0))  # the rest of the room is back
            r = await other.reserve([c], Decimal("0.85"), ttl=60, request_id="other")
            await settle(other, r, "0.85")
            assert await totals() == (Decimal("1.00"), Decimal(0))
            with pytest.raises(BudgetExceeded):  # the expired slice grants nothing any more
                await stalled.reserve([c], Decimal("0.01"), ttl=60, request_id="more")
            await settle(stalled, flight, "0.03")  # the call in flight ends: within its charge
            await cast(Any, stalled).flush_slices()
            assert await totals() == (Decimal("0.98"), Decimal(0))
            assert sum(spent.values()) == Decimal("0.98")
            for b in (stalled, other):
                live.remove(b)
                await b.aclose()
            assert await totals() == (Decimal("0.98"), Decimal(0))  # after close: nothing held
        finally:
            for b in live:
                await b.aclose()
