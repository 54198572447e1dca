"""``on_unavailable``: what the budget does while Redis cannot be reached.

- ``fail_closed`` (the default): every call raises the typed error
  (:class:`~squirrel_models_redis.errors.RedisUnavailable`, a ``BudgetStoreError``) within
  the caller's deadline; budgeted requests are refused.
- ``fail_open``: the first failure logs a warning and, for ``unavailable_retry_s``, this
  process enforces the same limits on its own, in memory (a
  :class:`~squirrel_models.builtins.memory_budget.MemoryBudgetBackend` that starts empty:
  it counts only what this process spends during the outage, so N instances may together
  spend up to N times a limit more than the shared budget allows). Then Redis is tried
  again. Settlements and releases of shared reservations made meanwhile, and the spend of the
  local ones (with their ledger rows), are kept in memory and replayed when Redis answers
  again, each once (the scripts are idempotent by id): spent money is not hidden, unless the
  process dies before Redis is back.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import attrs
from squirrel_models.budget import Charge, Reservation, ScopeUsage, StoreDeadline, store_deadline
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

from . import scripts as S
from .errors import RedisStoreError, RedisTimeout, RedisUnavailable
from .options import RedisOptions

__all__ = ["MAX_DEFERRED", "Fallback", "Outage"]

log = logging.getLogger("squirrel_models_redis")
T = TypeVar("T")
#: Replays kept while Redis is unreachable; past this the oldest are dropped (logged).
MAX_DEFERRED = 100_000
_SEP = "\x1f"


@attrs.define
class Outage:
    """Redis unreachable, as a ``fail_open`` store sees it: whether to wait before trying it
    again, and one warning when it goes down (``enforces``: what the process then does on its
    own); the caller says what it means when Redis answers again."""

    enforces: str
    _down_until: float = -math.inf
    _on: bool = False

    @property
    def waiting(self) -> bool:
        """Whether Redis failed less than ``unavailable_retry_s`` ago."""
        return time.monotonic() < self._down_until

    def went_down(self, operation: str, exc: BaseException, retry_s: float) -> None:
        self._down_until = time.monotonic() + retry_s
        if not self._on:
            self._on = True
            log.warning("redis unreachable (%s: %s); on_unavailable = fail_open: this process "
                        "enforces %s until redis answers (tried again every %.1f s)", operation,
                        exc, self.enforces, retry_s)

    def answered(self) -> bool:
        """Redis answered: whether that ends an outage."""
        was, self._on = self._on, False
        return was


@attrs.define
class Fallback:
    """The local side of ``fail_open`` (inactive with ``fail_closed``)."""

    options: RedisOptions
    clock: Callable[[], float]
    _local: MemoryBudgetBackend | None = None
    _local_ids: set[str] = attrs.field(factory=set)
    _outage: Outage = attrs.field(factory=lambda: Outage("the budget limits on its own spend"))
    _deferred: deque[tuple[str, S.Script, list[Any]]] = attrs.field(factory=deque)
    _flushing: bool = False
    _replayed: int = 0
    #: ``run(operation, script, args, deadline)``: one script on Redis (the backend's).
    run: Callable[..., Awaitable[Any]] | None = attrs.field(default=None, kw_only=True)

    @property
    def open(self) -> bool:
        return self.options.on_unavailable == "fail_open"

    @property
    def local(self) -> MemoryBudgetBackend:
        if self._local is None:
            self._local = MemoryBudgetBackend(clock=self.clock, max_ledger_rows=0)
        return self._local

    @property
    def deferred(self) -> int:
        """Replays waiting for Redis."""
        return len(self._deferred)

    def owns(self, reservation: Reservation) -> bool:
        return reservation.id in self._local_ids

    async def shared(self, operation: str, remote: Callable[[], Awaitable[T]],
                     local: Callable[[], Awaitable[T]], deadline: StoreDeadline) -> T:
        """``remote()``; with ``fail_open``, ``local()`` instead while Redis is unreachable."""
        if not self.open:
            return await remote()
        if self._outage.waiting:
            return await local()
        try:
            if self._deferred:
                await self.flush(deadline)  # what was settled meanwhile lands first
            result = await remote()
        except RedisUnavailable as exc:
            if isinstance(exc, RedisTimeout) and exc.by_deadline:
                raise  # the caller's own time is up: no store would help
            self._outage.went_down(operation, exc, self.options.unavailable_retry_s)
            return await local()
        if self._outage.answered():
            log.warning("redis answers again: shared budget limits apply (%d settlement(s) "
                        "made meanwhile replayed)", self._replayed)
            self._replayed = 0
        return result

    def defer(self, operation: str, script: S.Script, args: list[Any]) -> None:
        """Replay ``script(args)`` when Redis answers again."""
        if len(self._deferred) >= MAX_DEFERRED:
            dropped = self._deferred.popleft()
            log.error("redis unreachable for long: %d settlements waiting; dropped the oldest "
                      "(%s %s): its spend is missing from the shared budget", MAX_DEFERRED,
                      dropped[0], dropped[2][0])
        self._deferred.append((operation, script, args))

    async def flush(self, deadline: StoreDeadline | None = None) -> int:
        """Replay deferred calls in order; returns how many were replayed (before the first
        call that reaches Redis again, and in ``reconcile``). Raises RedisUnavailable if Redis
        is still unreachable (what is left stays); a replay that fails on the server is
        logged and kept, and the rest wait behind it."""
        run = self.run
        if self._flushing or run is None:
            return 0
        self._flushing = True
        done = 0
        try:
            while self._deferred:
                operation, script, args = self._deferred[0]
                try:
                    await run(operation, script, args, deadline or store_deadline(
                        self.options.connect_timeout_s + self.options.operation_timeout_s))
                except RedisUnavailable:
                    raise
                except RedisStoreError as exc:
                    log.error("replay of %s %s failed (%s): kept for later", operation,
                              args[0], exc)
                    break
                self._deferred.popleft()
                done += 1
                self._replayed += 1
        finally:
            self._flushing = False
        return done

    # --- the local budget ------------------------------------------------------------------

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str) -> Reservation:
        r = await self.local.reserve(charges, amount, ttl=ttl, request_id=request_id)
        self._local_ids.add(r.id)
        return r

    async def settle(self, reservation: Reservation, amount: Decimal, nanos: int, member: str,
                     score: str) -> Decimal:
        # Owned (not yet settled or released): this settle commits. A repeated one goes to
        # Redis, which does not know the id: nothing is committed twice.
        self._local_ids.discard(reservation.id)
        over = await self.local.settle(reservation, amount)
        fields = sorted({f"{c.scope}{_SEP}{c.bucket}" for c in reservation.charges})
        self.defer("commit", S.COMMIT, [reservation.id, nanos, member, score, *fields])
        return over

    async def release(self, reservation: Reservation) -> None:
        self._local_ids.discard(reservation.id)
        await self.local.release(reservation)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        return await self.local.usage(charges)
