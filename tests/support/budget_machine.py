"""A hypothesis state machine of the budget invariant, for every backend (issue 12, section 1).

Steps interleave the lifecycles of many reservations on one budget: reserve a request's worst
case, settle what an honest upstream used, settle a partial stream counted from its text (the
library's own estimate, capped by the reservation), release, cancel (the cleanup of a cancelled
attempt, run shielded inside a cancelled scope), crash (a process dies holding every open
reservation; after the lease expires, ``reconcile`` gives their headroom back) and whole
requests through a :class:`ModelManager` (answers, streams read to the end, left by ``break``,
cancelled, broken mid-way and cut by the deadline). After every step, for the bucket:

- ``committed + reserved <= limit``;
- ``reserved`` is the sum of the open reservations (nothing is left open by a finished request);
- committed spend never exceeds the sum of the settlements the steps made.

The backend runs on an event loop in a thread (``anyio.from_thread``), so the same machine
drives the memory, SQLite and PostgreSQL backends under asyncio and trio.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import anyio
import anyio.from_thread
import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from squirrel_models import (
    AIRequest,
    BudgetExceeded,
    DeadlineExceeded,
    MidStreamError,
    ModelManager,
    SquirrelError,
    Usage,
)
from squirrel_models.attempt import shielded
from squirrel_models.budget import BudgetBackend, Reservation
from squirrel_models.sqlbudget import to_nanos
from squirrel_models.tokens import Estimate

from .honest import CARD, WORD, HonestUpstream

__all__ = ["Clock", "run_budget_machine"]

#: A few worst cases fit: refusals, and full buckets, are part of every run.
LIMIT = Decimal("0.01")
TTL = 60.0


@attrs.define
class Clock:
    """Seconds since the epoch, moved on by hand (leases expire when the machine says)."""

    now: float = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def _request(words: int, max_tokens: int | None, key: str, mode: str = "") -> AIRequest:
    return AIRequest.from_prompt("hello " * words, max_tokens=max_tokens, budget_key=key,
                                 metadata={"mode": mode} if mode else {})


def machine_for(portal: anyio.from_thread.BlockingPortal, mm: ModelManager, backend: BudgetBackend,
                clock: Clock) -> type[RuleBasedStateMachine]:
    tm = mm.tokens

    class BudgetMachine(RuleBasedStateMachine):
        held = Bundle("held")

        def __init__(self) -> None:
            super().__init__()
            self.key = uuid.uuid4().hex[:12]  # fresh buckets for every run
            self.charges = tm.charges(CARD, self.key)
            self.open: dict[str, Reservation] = {}
            self.settled_nanos = 0  # the most the steps' settlements may have committed
            self.stats = {"refused": 0, "requests": 0}

        def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
            return portal.call(fn, *args)

        # --- reservations held across steps --------------------------------------------

        @rule(target=held, words=st.integers(1, 400),
              max_tokens=st.one_of(st.none(), st.integers(1, 2000)))
        def reserve(self, words: int, max_tokens: int | None) -> Any:
            est = tm.estimate(_request(words, max_tokens, self.key), CARD)
            assert est.max_output <= CARD.output_limit and est.prompt.tokens <= CARD.context_window

            async def go() -> Reservation | None:
                return await tm.reserve(CARD, est, budget_key=self.key, request_id="machine")
            try:
                r = self._call(go)
            except BudgetExceeded:
                self.stats["refused"] += 1
                return None
            assert r is not None
            self.open[r.id] = r
            return (r, est)

        def _take(self, item: Any) -> tuple[Reservation, Estimate] | None:
            if item is None or item[0].id not in self.open:
                return None  # refused, or dropped by a crash
            del self.open[item[0].id]
            return item

        def _settle(self, r: Reservation, usage: Usage) -> None:
            cost = tm.estimate_cost(CARD, usage)
            assert cost is not None and cost <= r.amount  # within the reservation, by construction
            self._call(tm.settle, r, CARD, cost)
            self.settled_nanos += to_nanos(cost)

        @rule(item=consumes(held), part=st.floats(0, 1))
        def settle_honest(self, item: Any, part: float) -> None:
            taken = self._take(item)
            if taken is not None:
                r, est = taken
                self._settle(r, Usage(int(est.prompt.tokens * part), int(est.max_output * part)))

        @rule(item=consumes(held), received=st.integers(0, 10_000))
        def settle_partial_stream(self, item: Any, received: int) -> None:
            """A stream broken or left early: what was received, counted from its text by
            the byte bound (an estimate, often far above the output cap), capped."""
            taken = self._take(item)
            if taken is not None:
                r, est = taken
                counted = tm.count_text(CARD, WORD * received)
                self._settle(r, tm.bounded(Usage(est.prompt.tokens, counted.tokens,
                                                 source="estimated"), est))

        @rule(item=consumes(held))
        def release(self, item: Any) -> None:
            taken = self._take(item)
            if taken is not None:
                self._call(tm.release, taken[0])

        @rule(item=consumes(held))
        def cancel(self, item: Any) -> None:
            """An attempt cancelled while it held the reservation: its cleanup runs shielded."""
            taken = self._take(item)
            if taken is None:
                return

            async def go() -> None:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await shielded(lambda: tm.release(taken[0]))
                    await anyio.sleep(1)  # cancelled here, after the cleanup
            self._call(go)

        @rule()
        def crash(self) -> None:
            """The process dies holding every open reservation; after the leases expire, a
            restart's reconcile returns their headroom."""
            self.open.clear()
            clock.now += TTL + 1
            self._call(backend.reconcile)

        # --- whole requests through the manager ----------------------------------------

        @rule(kind=st.sampled_from(["complete", "stream", "break", "cancel", "broken", "deadline"]),
              words=st.integers(1, 300), max_tokens=st.one_of(st.none(), st.integers(1, 600)))
        def request(self, kind: str, words: int, max_tokens: int | None) -> None:
            mode = {"broken": "break", "deadline": "stall"}.get(kind, "")
            req = _request(words, max_tokens, self.key, mode)

            async def go() -> None:
                if kind == "complete":
                    await mm.complete(req)
                    return
                with anyio.CancelScope() as scope:
                    async with mm.stream(req, timeout=0.05 if kind == "deadline" else None) as s:
                        n = 0
                        async for _ in s:
                            n += 1
                            if n == 3 and kind == "break":
                                break
                            if n == 3 and kind == "cancel":
                                scope.cancel()
            self.stats["requests"] += 1
            try:
                self._call(go)
            except (BudgetExceeded, MidStreamError, DeadlineExceeded):
                pass
            except SquirrelError:  # the breaker opened after stalls, say: still typed
                pass

        # --- the invariant -------------------------------------------------------------

        @invariant()
        def within_the_limit(self) -> None:
            (u,) = self._call(backend.usage, self.charges)
            assert u.committed + u.reserved <= u.limit, (u.committed, u.reserved, u.limit)
            held = sum(to_nanos(r.amount) for r in self.open.values())
            # SQL backends round each amount up to the nano-dollar; memory keeps it exact.
            assert abs(to_nanos(u.reserved) - held) <= len(self.open), (u.reserved, held)

    return BudgetMachine


@contextmanager
def manager_on(portal: anyio.from_thread.BlockingPortal, backend: BudgetBackend
               ) -> Iterator[ModelManager]:
    """A ModelManager on ``backend`` (closed, with the backend, on exit) serving CARD."""
    config = {"budget": {"limits": [{"scope": "key:*", "limit": str(LIMIT)}],
                         "reservation_ttl": TTL},
              "timeout": 30, "fallback": {"max_attempts": 2}}

    async def make() -> ModelManager:
        mm = ModelManager(config, budget_backend=backend)
        await mm.start()
        mm.register_model(CARD, HonestUpstream("h", [CARD]))
        return mm
    mm = portal.call(make)
    try:
        yield mm
    finally:
        portal.call(mm.aclose)


def run_budget_machine(make_backend: Callable[[Clock], BudgetBackend], *, anyio_backend: str,
                       max_examples: int = 25, steps: int = 30) -> None:
    """Run the machine against backends made by ``make_backend(clock)`` (built and used on
    the portal's event loop)."""
    clock = Clock()
    with anyio.from_thread.start_blocking_portal(anyio_backend) as portal:
        backend = portal.call(_make, make_backend, clock)
        with manager_on(portal, backend) as mm:
            machine = machine_for(portal, mm, backend, clock)
            run_state_machine_as_test(machine, settings=settings(
                max_examples=max_examples, stateful_step_count=steps, deadline=None,
                derandomize=True, database=None))


async def _make(make_backend: Callable[[Clock], BudgetBackend], clock: Clock) -> BudgetBackend:
    return make_backend(clock)
