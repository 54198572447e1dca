"""Reservations whose callers gave up, in every order the server may run their commands, on a
real Redis server: a reserve answered or left in flight (run later, once or twice: a driver's
retry), its undo run before or after it, once or twice, a settle or release after the undo,
leases expiring. After every step: ``committed + reserved <= limit`` on each bucket, and both
equal what the model says; at the end, once every undo has run and every reserve in flight
has arrived, nothing is held and no lease is open.

The scripts run directly (``RESERVE``, ``UNDO``, ``SETTLE``, ``RELEASE``, ``EXPIRE``), so the
machine chooses the order in which a resumed server runs them; how the backend gives up on a
reserve and sends its undo is proved against a SIGSTOPped server in ``test_deadlines.py``."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import anyio.from_thread
import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from squirrel_models.budget import Charge
from squirrel_models.secrets import Secret
from squirrel_models.sqlbudget import bucket_keys, to_nanos
from squirrel_models_redis import RedisBudgetBackend, RedisOptions
from squirrel_models_redis import scripts as S
from squirrel_models_redis.budget import EXPIRE_BATCH, reserve_args, undo_args

from .redisserver import RedisServer

TTL = 60.0
CHARGES = [Charge("global", "total", "total", Decimal("0.01")),
           Charge("user", "day", "alice", Decimal("0.006"))]
KEYS = bucket_keys(CHARGES)


@attrs.define
class Request:
    """The model of one reservation id: what the server holds for it."""

    id: str
    nanos: int
    in_flight: int = 0  # reserve commands the server has taken but not run yet
    held: bool = False  # an open lease
    lease: bool = False  # a lease, open or expired (a settle still finds it)
    undone: bool = False  # UNDO ran: its tombstone is there


def machine_for(portal: Any, server: RedisServer) -> type[RuleBasedStateMachine]:
    class UndoMachine(RuleBasedStateMachine):
        answered = Bundle("answered")
        given_up = Bundle("given_up")

        def __init__(self) -> None:
            super().__init__()
            self.now = 1_000_000.0
            self.backend = portal.call(self._make)
            self.requests: list[Request] = []
            self.committed = 0

        async def _make(self) -> RedisBudgetBackend:
            return RedisBudgetBackend(RedisOptions(key_prefix=f"u{uuid.uuid4().hex[:12]}"),
                                      clock=lambda: self.now,
                                      url=Secret(server.url, opaque=False))

        def _eval(self, script: S.Script, args: list[Any]) -> Any:
            b = self.backend
            return portal.call(b.eval, script.name, script, b._keys, args)

        def _reserved(self) -> int:
            return sum(r.nanos for r in self.requests if r.held)

        def _run_reserve(self, r: Request) -> None:
            """The server runs one reserve command for ``r``."""
            reply = self._eval(S.RESERVE, reserve_args(r.id, r.nanos, TTL, repr(self.now), "",
                                                       KEYS))
            fits = all(self.committed + self._reserved() + r.nanos <= k.limit for k in KEYS)
            if r.lease:
                assert int(reply[0]) == 1  # a retried call reserves nothing twice
            elif r.undone:
                assert int(reply[0]) == 2, reply  # met its tombstone: holds nothing
            else:
                assert int(reply[0]) == (1 if fits else 0), (reply, fits)
                r.held = r.lease = fits

        @rule(target=answered, cents=st.integers(0, 700))
        def reserve_answered(self, cents: int) -> Request:
            r = Request(uuid.uuid4().hex, cents * 10_000)
            self.requests.append(r)
            self._run_reserve(r)
            return r

        @rule(target=given_up, cents=st.integers(0, 700), copies=st.integers(1, 2))
        def reserve_given_up(self, cents: int, copies: int) -> Request:
            """The caller left before the answer: the server holds ``copies`` commands."""
            r = Request(uuid.uuid4().hex, cents * 10_000, in_flight=copies)
            self.requests.append(r)
            return r

        @rule(r=given_up)
        def server_runs_a_late_reserve(self, r: Request) -> None:
            if r.in_flight:
                r.in_flight -= 1
                self._run_reserve(r)

        @rule(r=st.one_of(given_up, answered))
        def undo(self, r: Request) -> None:
            """Run (again) the undo of a reserve given up on, or of a release that did not
            get through."""
            dropped = int(self._eval(S.UNDO, undo_args(repr(self.now), {r.id: 3600.0})))
            assert dropped == int(r.lease), (dropped, r)
            r.held = r.lease = False
            r.undone = True

        @rule(r=st.one_of(given_up, answered), share=st.fractions(0, 1))
        def settle(self, r: Request, share: Any) -> None:
            if r.lease and not r.held:
                return  # a settle past expiry commits once, by design: not this machine's
            nanos = int(r.nanos * share)
            held = self._eval(S.SETTLE, [r.id, nanos, "", "0"])
            assert (held is not None) == r.lease, (held, r)
            if r.lease:
                self.committed += nanos
            r.held = r.lease = False

        @rule(r=st.one_of(given_up, answered))
        def release(self, r: Request) -> None:
            self._eval(S.RELEASE, [r.id])
            r.held = r.lease = False

        @rule()
        def leases_expire(self) -> None:
            self.now += TTL + 1
            self._eval(S.EXPIRE, [repr(self.now), EXPIRE_BATCH, ""])
            for r in self.requests:
                r.held = False

        @invariant()
        def never_overspends(self) -> None:
            usage = portal.call(self.backend.usage, CHARGES)
            for k, u in zip(KEYS, usage, strict=True):
                committed, reserved = to_nanos(u.committed), to_nanos(u.reserved)
                assert committed + reserved <= k.limit, (k, u)
                assert (committed, reserved) == (self.committed, self._reserved()), u

        def teardown(self) -> None:
            try:
                for r in self.requests:
                    if r.in_flight or r.undone:  # a caller gave up on it: its undo runs
                        self.undo(r)
                    while r.in_flight:  # and the server runs what it took, after it
                        r.in_flight -= 1
                        self._run_reserve(r)
                    if r.lease:
                        self.release(r)
                self.never_overspends()
                audit = portal.call(self.backend.audit)
                assert audit["open"] == 0 and audit["mismatched"] == [], audit
            finally:
                portal.call(self.backend.aclose)

    return UndoMachine


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_undo_holds_nothing_in_any_order(redis_server: RedisServer, anyio_backend: str) -> None:
    with anyio.from_thread.start_blocking_portal(anyio_backend) as portal:
        run_state_machine_as_test(machine_for(portal, redis_server), settings=settings(
            max_examples=30, stateful_step_count=30, deadline=None, derandomize=True,
            database=None))
