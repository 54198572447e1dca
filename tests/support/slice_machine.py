"""A hypothesis state machine of leased budget slices (:mod:`squirrel_models.slices`, issue 16),
for every SQL backend: two "processes" (two backends with slices on, one store) interleave
reserves (some cut by a deadline), settles (some above their reservation), releases, flushes,
crashes (a process stops without flushing; after its leases expire another process's next
store call charges them in full), restarts, and stalls (a live process flushes only after its
leases expired and were charged in full). After every step, read from the store:

- ``committed + reserved <= limit`` (plus what settlements beyond their reservation added);
- the ledger's costs sum to ``committed`` (a flush writes its rows in its transaction; an
  expired slice's charge is a row);
- every live process uses no more of a slice than the store holds for it;
- a refused reservation was refused with no free room held by that process on its bucket.

At the end every process closes: nothing is reserved, no lease is open, and committed is at
least every settlement made (a crash loses room, never money).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from squirrel_models.budget import Charge, LedgerRow, Reservation
from squirrel_models.errors import BudgetExceeded
from squirrel_models.sqlbudget import to_nanos

from .budget_machine import Clock

__all__ = ["LIMIT", "LEASE_S", "MACHINE_OPTIONS", "SCENARIOS", "StoreView",
           "late_settle_on_a_dropped_slice", "machine_backends", "run_slice_machine", "scenario_scope",
           "stalled_slice_gives_back_its_unused_room", "wall_clock_jump_keeps_local_reservations"]

#: SLICE_MACHINE_NO_SHRINK=1: report the first failure as found (shrinking takes minutes).
PHASES = ([Phase.explicit, Phase.reuse, Phase.generate] if os.environ.get("SLICE_MACHINE_NO_SHRINK")
          else list(Phase))
LIMIT = Decimal("1.00")
#: Long enough that the background flush never runs during a run: the machine flushes.
FLUSH_S = 1000.0
LEASE_S = 4000.0
#: Every reservation's ttl: longer than a lease, so only the teardown outlives it.
TTL = LEASE_S * 10
#: The slice options of every backend the machine drives.
MACHINE_OPTIONS = {"slices": True, "slice_flush_s": FLUSH_S, "slice_lease_s": LEASE_S, "slice_requests": 4}


def machine_backends(backend: Callable[..., Any], options: Callable[..., Any], /, **store: Any
                     ) -> Callable[[Clock], Any]:
    """The machine's factory of "processes": ``backend(options(**store, **MACHINE_OPTIONS),
    clock=clock)`` (``store``: where the backend keeps its state; ``backend`` a class, or a
    ``functools.partial`` of one with its other arguments). Takes the plugin's classes, so
    this module imports no plugin."""
    return lambda clock: backend(options(**store, **MACHINE_OPTIONS), clock=clock)


class StoreView:
    """What the machine reads from the store (each backend's test gives its own)."""

    async def totals(self, scope: str) -> tuple[int, int]:
        """(committed, reserved) of the bucket, nano-USD."""
        raise NotImplementedError

    async def ledger_sum(self, scope: str) -> int:
        """The ledger's costs on ``scope``, nano-USD."""
        raise NotImplementedError

    async def lease(self, lease_id: str) -> int | None:
        """The room an open slice holds; for a slice that expired (charged in full), what its
        charge still covers; None if the store has no such slice."""
        raise NotImplementedError

    async def open_leases(self, scope: str) -> int:
        raise NotImplementedError

    async def crash(self, backend: Any) -> None:
        """Stop ``backend`` as a killed process stops: no flush, no hand-back (each store's
        view stops its connections after :meth:`stop_slices`)."""
        raise NotImplementedError

    @staticmethod
    def stop_slices(backend: Any) -> None:
        """Stop ``backend``'s slices the way a kill stops them: no flush, no hand-back."""
        sl = backend._slices
        sl._closed = True
        if sl._keeper_scope is not None:
            sl._keeper_scope.cancel()


def machine_for(portal: anyio.from_thread.BlockingPortal, make: Callable[[Clock], Any],
                view: StoreView, clock: Clock, scope: str) -> type[RuleBasedStateMachine]:
    charges = (Charge(scope, "total", "total", LIMIT),)

    class SliceMachine(RuleBasedStateMachine):
        held = Bundle("held")

        def __init__(self) -> None:
            super().__init__()
            self.procs: list[Any] = [self._call(self._open) for _ in range(2)]
            self.settled = 0  # nano-USD settled by every process, flushed or not
            self.over = 0  # settled beyond the reservation (an overspend may pass the limit)
            self.rows = 0

        def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            return portal.call(fn, *args)

        async def _open(self) -> Any:
            backend = make(clock)
            await backend.open()
            return backend

        @rule(target=held, proc=st.integers(0, 1), cents=st.integers(1, 30),
              cut=st.sampled_from([None, None, None, 0.0, 0.001]))
        def reserve(self, proc: int, cents: int, cut: float | None) -> Any:
            backend = self.procs[proc]
            amount = Decimal(cents) / 100

            async def go() -> Reservation | None:
                with anyio.move_on_after(1e9 if cut is None else cut):
                    return await backend.reserve(charges, amount, ttl=TTL)
                return None
            try:
                r = self._call(go)
            except BudgetExceeded:
                # Refused only with no free room of its own on this bucket (it handed it back).
                sl = backend._slices
                free = sum(le.free() for le in sl._leases.values())
                assert free < to_nanos(amount), free
                committed, reserved = self._call(view.totals, scope)
                assert to_nanos(LIMIT) - committed - reserved < to_nanos(amount)
                return None
            return None if r is None else (backend, r)

        @rule(target=held, proc=st.integers(0, 1), cents=st.integers(1, 30), close=st.booleans(),
              part=st.sampled_from([0.0, 1.0, 1.5]))
        def reserve_and_settle_during_a_flush(self, proc: int, cents: int, close: bool,
                                              part: float) -> Any:
            """A flush (or a hand-back) waits for the store while other tasks reserve and settle
            from the slice: they must not use room the flush is handing back."""
            backend = self.procs[proc]
            amount = Decimal(cents) / 100
            got: list[Any] = []

            async def go() -> None:
                async def reserve() -> None:
                    try:
                        r = await backend.reserve(charges, amount, ttl=TTL)
                    except BudgetExceeded:
                        return
                    spent = (r.amount * Decimal(str(part))).quantize(Decimal("0.0001"))
                    self.rows += 1
                    row = LedgerRow(f"req{self.rows}", 1, "p", "m", "ok", cost=spent, scopes=(scope,))
                    await backend.settle(r, spent, ledger=row)
                    self.settled += to_nanos(spent)
                    self.over += max(0, to_nanos(spent) - to_nanos(r.amount))
                    with contextlib.suppress(BudgetExceeded):
                        got.append(await backend.reserve(charges, amount, ttl=TTL))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: backend._slices.flush(close=close))
                    tg.start_soon(reserve)
            self._call(go)
            return (backend, got[0]) if got else None

        @rule(item=consumes(held), part=st.sampled_from([0.0, 0.3, 1.0, 1.5]))
        def settle(self, item: Any, part: float) -> None:
            if item is None or item[0] not in self.procs:
                return
            backend, r = item
            amount = (r.amount * Decimal(str(part))).quantize(Decimal("0.0001"))
            self.rows += 1
            row = LedgerRow(f"req{self.rows}", 1, "p", "m", "ok", cost=amount, scopes=(scope,))
            self._call(lambda: backend.settle(r, amount, ledger=row))
            self.settled += to_nanos(amount)
            self.over += max(0, to_nanos(amount) - to_nanos(r.amount))

        @rule(item=consumes(held))
        def release(self, item: Any) -> None:
            if item is None or item[0] not in self.procs:
                return
            backend, r = item
            self._call(backend.release, r)

        @rule(proc=st.integers(0, 1))
        def flush(self, proc: int) -> None:
            self._call(self.procs[proc]._slices.flush)

        @rule(proc=st.integers(0, 1))
        def idle(self, proc: int) -> None:
            """Hand back the free room, as an idle process does."""
            self._call(lambda: self.procs[proc]._slices.flush(close=True))

        @rule(proc=st.integers(0, 1), expire=st.booleans())
        def crash(self, proc: int, expire: bool) -> None:
            """The process dies; with ``expire``, its leases then pass their expiry and the
            other process's next flush charges them in full. A new process takes its place."""
            self._call(view.crash, self.procs[proc])
            self.procs[proc] = self._call(self._open)
            if expire:
                clock.now += LEASE_S + 1
                self._call(self.procs[1 - proc]._slices.flush)

        @rule(proc=st.integers(0, 1))
        def stall_past_the_lease(self, proc: int) -> None:
            """The process stalls (alive, what it used unflushed) until its leases expire and
            the other process's reconcile charges them in full; then its late flush writes its
            rows and lowers those charges by what they account for (counted once). Its local
            reservations stay held, to be settled or released later."""
            clock.now += LEASE_S + 1
            self._call(self.procs[1 - proc].reconcile)
            self._call(self.procs[proc]._slices.flush)

        # --- invariants --------------------------------------------------------------

        @invariant()
        def within_the_limit_and_accounted(self) -> None:
            committed, reserved = self._call(view.totals, scope)
            # Only a settlement beyond its reservation (recorded, never hidden) passes it.
            assert committed + reserved <= to_nanos(LIMIT) + self.over, (committed, reserved)
            assert self._call(view.ledger_sum, scope) == committed

        @invariant()
        def processes_use_only_what_the_store_holds(self) -> None:
            for backend in self.procs:
                for lease in backend._slices._all():
                    if not lease.known:
                        continue
                    held = self._call(view.lease, lease.id)
                    assert lease.used() <= (held or 0), (lease.used(), held)

        def teardown(self) -> None:
            for backend in self.procs:
                self._call(backend.aclose)
            # Crashed processes' leases expire (charged in full), and so do reservations still
            # held (some went to the store directly: a slice found expired by the reserve's
            # own flush, or too little room left).
            clock.now += TTL + 1
            closer = self._call(self._open)
            self._call(closer.reconcile)
            self._call(closer.aclose)
            committed, reserved = self._call(view.totals, scope)
            assert (reserved, self._call(view.open_leases, scope)) == (0, 0)
            assert committed >= self.settled  # money is never hidden
            assert self._call(view.ledger_sum, scope) == committed

    return SliceMachine


def run_slice_machine(make: Callable[[Clock], Any], view_for: Callable[[], StoreView], *,
                      anyio_backend: str, max_examples: int = 8, steps: int = 25) -> None:
    clock = Clock()
    counter = iter(range(10**9))
    with anyio.from_thread.start_blocking_portal(anyio_backend) as portal:
        view = view_for()

        # Each example gets its own scope so examples never share a bucket.
        def factory() -> RuleBasedStateMachine:
            return machine_for(portal, make, view, clock, f"key:run{next(counter)}")()

        run_state_machine_as_test(factory, settings=settings(
            max_examples=max_examples, stateful_step_count=steps, deadline=None,
            derandomize=True, database=None, phases=PHASES))


async def late_settle_on_a_dropped_slice(make: Callable[[Clock], Any], view: StoreView,
                                         scope: str) -> None:
    """A settle that arrives after its slice was handed back and dropped (its local
    reservation expired first, the idle slice closed): counted once. Before, the slice's next
    flush sent its cumulative overspend again and the store, which had forgotten the slice,
    applied all of it a second time: committed 1.00 for 0.65 spent, the ledger 0.65."""
    charges = (Charge(scope, "total", "total", LIMIT),)
    backend = make(Clock())
    await backend.open()
    try:
        r0 = await backend.reserve(charges, Decimal("0.20"), ttl=TTL)
        row = LedgerRow("r0", 1, "p", "m", "ok", cost=Decimal("0.60"), scopes=(scope,))
        await backend.settle(r0, Decimal("0.60"), ledger=row)  # beyond the slice's room
        await backend._slices.flush()
        r1 = await backend.reserve(charges, Decimal("0.05"), ttl=0.01)
        await anyio.sleep(0.05)
        await backend._slices.flush(close=True)  # r1's room comes back; the slice is dropped
        row = LedgerRow("r1", 1, "p", "m", "ok", cost=Decimal("0.05"), scopes=(scope,))
        await backend.settle(r1, Decimal("0.05"), ledger=row)
        await backend._slices.flush()
    finally:
        await backend.aclose()
    spent = to_nanos(Decimal("0.65"))
    assert await view.totals(scope) == (spent, 0)
    assert await view.ledger_sum(scope) == spent
    assert await view.open_leases(scope) == 0


async def wall_clock_jump_keeps_local_reservations(make: Callable[[Clock], Any],
                                                   view: StoreView, scope: str) -> None:
    """The wall clock jumps forward past a slice's reservation's lifetime (NTP, a resumed VM)
    while its request runs: the reservation stays held, and its settle within it is no
    overspend. Before, the next flush released it by ``time.time()``, its room went back to
    the slice, and the settle of 0.20 reserved came back as 0.20 of recorded overspend."""
    import time

    charges = (Charge(scope, "total", "total", LIMIT),)
    backend = make(Clock())  # the store's own clock stays put: only this process's jumps
    await backend.open()
    real = time.time
    try:
        r0 = await backend.reserve(charges, Decimal("0.20"), ttl=60)
        time.time = lambda: real() + 3 * 3600  # type: ignore[assignment]
        try:
            await backend._slices.flush()
            over = await backend.settle(r0, Decimal("0.20"), ledger=LedgerRow(
                "r0", 1, "p", "m", "ok", cost=Decimal("0.20"), scopes=(scope,)))
        finally:
            time.time = real  # type: ignore[assignment]
        assert over == 0
        await backend._slices.flush()
    finally:
        await backend.aclose()
    spent = to_nanos(Decimal("0.20"))
    assert await view.totals(scope) == (spent, 0)
    assert await view.ledger_sum(scope) == spent


async def stalled_slice_gives_back_its_unused_room(make: Callable[[Clock], Any], view: StoreView,
                                                   scope: str) -> None:
    """A live process stalls past its slice's lease; the store charges the slice in full
    (0.25). Once the process knows, its flushes lower that charge to what its open
    reservations still hold, then to nothing: committed ends at what was spent. Before, the
    unused room stayed charged for the rest of the period (committed 0.25 for 0.13 spent: in
    one gateway run, 2.53 of a key's budget for 0.45 spent)."""
    charges = (Charge(scope, "total", "total", LIMIT),)
    clock = Clock()
    backend = make(clock)
    await backend.open()
    try:
        r0 = await backend.reserve(charges, Decimal("0.10"), ttl=TTL)
        r1 = await backend.reserve(charges, Decimal("0.10"), ttl=TTL)
        assert await view.totals(scope) == (0, to_nanos(Decimal("0.25")))  # one slice
        clock.now += LEASE_S + 1  # the stall: another process's call charges the slice
        await backend.reconcile()
        await backend.settle(r0, Decimal("0.08"), ledger=LedgerRow(
            "r0", 1, "p", "m", "ok", cost=Decimal("0.08"), scopes=(scope,)))
        await backend._slices.flush()  # charged in full, less what r0 spent
        await backend._slices.flush()  # knows: lowered to what r1 holds
        spent = to_nanos(Decimal("0.08"))
        assert await view.totals(scope) == (spent + to_nanos(Decimal("0.10")), 0)
        assert await view.ledger_sum(scope) == spent + to_nanos(Decimal("0.10"))
        await backend.settle(r1, Decimal("0.05"), ledger=LedgerRow(
            "r1", 1, "p", "m", "ok", cost=Decimal("0.05"), scopes=(scope,)))
        await backend._slices.flush()
        await backend._slices.flush()
        spent += to_nanos(Decimal("0.05"))
        assert await view.totals(scope) == (spent, 0)
        assert await view.ledger_sum(scope) == spent
        assert not backend._slices._all()  # done with: dropped
    finally:
        await backend.aclose()
    assert await view.totals(scope) == (spent, 0)
    assert await view.ledger_sum(scope) == spent
    assert await view.open_leases(scope) == 0


#: Each a regression once found on every store: ``scenario(make, view, scope)``.
SCENARIOS = (late_settle_on_a_dropped_slice, wall_clock_jump_keeps_local_reservations,
             stalled_slice_gives_back_its_unused_room)


def scenario_scope(scenario: Callable[..., Any]) -> str:
    """A bucket of its own for each scenario."""
    return f"key:{scenario.__name__}"
