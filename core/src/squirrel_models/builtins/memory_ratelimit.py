"""The in-memory rate-limit store (``[rate_limits] store = "memory"``): exact, thread-safe,
one process.

Each ``rpm``/``tpm`` count is a sliding log (see :mod:`squirrel_models.ratelimit`): a queue
of the admissions of the last window, oldest first, with their running sum, so admitting,
settling and releasing cost O(1) (amortized: each admission leaves the queue once). Every
operation runs under one lock with no ``await`` inside, so it is atomic across tasks and
threads. Counts are per process: several processes (or hosts) sharing a provider's limit
need a shared store (``squirrel-models-redis``), or each must be given its share.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar

import attrs

from ..errors import RateLimitExceeded
from ..hookspecs import hookimpl
from ..ratelimit import RateCharge, RateLease, RateLimitStoreType, RateUsage

# An admission in a count's log: [at, amount, state]; state 0 reserved (not yet settled),
# 1 settled, -1 gone (released, or out of the window).
_RESERVED, _SETTLED, _GONE = 0, 1, -1
#: Expired leases kept so that a late settle still sets its token count (oldest dropped).
MAX_EXPIRED = 10_000


class _Count:
    """One (scope, kind) count of ``rpm`` or ``tpm``: its log and running sums."""

    __slots__ = ("log", "reserved", "used")

    def __init__(self) -> None:
        self.log: deque[list[float]] = deque()
        self.used = 0
        self.reserved = 0

    def trim(self, cutoff: float) -> None:
        log = self.log
        while log and log[0][0] <= cutoff:
            e = log.popleft()
            if e[2] != _GONE:
                self.used -= int(e[1])
                if e[2] == _RESERVED:
                    self.reserved -= int(e[1])
                e[2] = _GONE

    def retry_in(self, need: int, limit: int, window: float, now: float) -> float | None:
        """Seconds until ``need`` more fits (None: never, it is more than the limit)."""
        if need > limit:
            return None
        excess = self.used + need - limit
        freed = 0
        for at, amount, state in self.log:
            if state != _GONE:
                freed += int(amount)
                if freed >= excess:
                    return max(at + window - now, 0.0)
        return window  # unreachable while the sums are consistent: a safe answer


@attrs.frozen
class MemoryRateLimitOptions:
    """``[rate_limits.options]`` of the ``memory`` store: none."""


# What a lease holds: its lease, the entries it added [(count, entry, is_tpm)], and the
# scopes of its concurrency slots.
_Held = tuple[RateLease, list[tuple[_Count, list[float], bool]], tuple[str, ...]]


@attrs.define
class MemoryRateLimitStore:
    """Rate-limit counts in process memory (see the module docstring)."""

    #: No method suspends, so the manager needs no cancel shield around settle and release.
    nonblocking: ClassVar[bool] = True

    clock: Callable[[], float] = time.monotonic
    _counts: dict[tuple[str, str], _Count] = attrs.field(factory=dict)
    _inflight: dict[str, int] = attrs.field(factory=dict)
    _open: dict[str, _Held] = attrs.field(factory=dict)
    _expired: dict[str, _Held] = attrs.field(factory=dict)
    _expiries: list[tuple[float, str]] = attrs.field(factory=list)
    _ids: itertools.count[int] = attrs.field(factory=itertools.count)
    _prefix: str = attrs.field(factory=lambda: os.urandom(4).hex() + "-")
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def from_options(cls, options: MemoryRateLimitOptions | None = None
                     ) -> MemoryRateLimitStore:
        return cls()

    # --- internals (lock held) ---------------------------------------------------------

    def _free_slots(self, scopes: tuple[str, ...]) -> None:
        inflight = self._inflight
        for scope in scopes:
            inflight[scope] -= 1

    def _take(self, lid: str) -> _Held | None:
        """The lease ``lid`` out of the open (its slots freed) or the expired ones; None when
        it was settled or released already."""
        held = self._open.pop(lid, None)
        if held is not None:
            self._free_slots(held[2])
            return held
        return self._expired.pop(lid, None)

    def _expire_locked(self, now: float) -> int:
        heap, n = self._expiries, 0
        while heap and heap[0][0] <= now:
            held = self._open.pop(heapq.heappop(heap)[1], None)
            if held is not None:
                self._free_slots(held[2])
                self._expired[held[0].id] = held
                n += 1
        if len(self._expired) > MAX_EXPIRED:
            for lid in list(self._expired)[:MAX_EXPIRED // 2]:
                del self._expired[lid]
        return n

    def _count(self, charge: RateCharge, now: float) -> _Count:
        key = (charge.scope, charge.kind)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count()
        else:
            count.trim(now - charge.window)
        return count

    # --- the store contract ------------------------------------------------------------

    async def reserve(self, charges: Sequence[RateCharge], tokens: int, *, ttl: float,
                      request_id: str = "") -> RateLease:
        with self._lock:
            now = self.clock()
            heap = self._expiries
            if heap and heap[0][0] <= now:
                self._expire_locked(now)
            # Check every charge before taking anything: all or nothing. ``pending`` counts
            # what earlier charges of this call on the same (scope, kind) would add.
            pending: dict[tuple[str, str], int] = {}
            counts: list[_Count | None] = []
            for c in charges:
                key = (c.scope, c.kind)
                need = tokens if c.kind == "tpm" else 1
                extra = pending.get(key, 0)
                if c.kind == "concurrent":
                    used = self._inflight.get(c.scope, 0) + extra
                    if used + 1 > c.limit:
                        raise RateLimitExceeded(scope=c.scope, kind=c.kind, limit=c.limit,
                                                used=used, requested=1, retry_in=None)
                    counts.append(None)
                else:
                    count = self._count(c, now)
                    if count.used + extra + need > c.limit:
                        raise RateLimitExceeded(
                            scope=c.scope, kind=c.kind, limit=c.limit,
                            used=count.used + extra, requested=need,
                            retry_in=None if extra else count.retry_in(need, c.limit,
                                                                       c.window, now))
                    counts.append(count)
                pending[key] = extra + need
            lid = self._prefix + str(next(self._ids))
            lease = RateLease(lid, tuple(charges), tokens, now, now + ttl, request_id)
            entries: list[tuple[_Count, list[float], bool]] = []
            slots: list[str] = []
            for c, held_count in zip(charges, counts, strict=True):
                if held_count is None:
                    self._inflight[c.scope] = self._inflight.get(c.scope, 0) + 1
                    slots.append(c.scope)
                else:
                    amount = tokens if c.kind == "tpm" else 1
                    e = [now, amount, _RESERVED]
                    held_count.log.append(e)
                    held_count.used += amount
                    held_count.reserved += amount
                    entries.append((held_count, e, c.kind == "tpm"))
            self._open[lid] = (lease, entries, tuple(slots))
            heapq.heappush(heap, (lease.expires_at, lid))
            if len(heap) > 2 * len(self._open) + 1024:
                # Mostly settled leases, which leave the heap lazily: rebuild it from the open
                # ones (amortized O(1) per lease), so it stays bounded by what is in flight.
                heap[:] = [(h[0].expires_at, h[0].id) for h in self._open.values()]
                heapq.heapify(heap)
            return lease

    async def settle(self, lease: RateLease, tokens: int) -> int:
        with self._lock:
            held = self._take(lease.id)
            if held is None:
                return 0  # settled or released already
            for count, e, is_tpm in held[1]:
                if e[2] != _RESERVED:
                    continue  # left the window: nothing to adjust
                amount = int(e[1])
                count.reserved -= amount
                if is_tpm:
                    count.used += tokens - amount
                    e[1] = tokens
                e[2] = _SETTLED
            return max(tokens - lease.tokens, 0)

    async def release(self, lease: RateLease) -> None:
        with self._lock:
            held = self._take(lease.id)
            if held is None:
                return
            for count, e, _ in held[1]:
                if e[2] == _GONE:
                    continue
                amount = int(e[1])
                count.used -= amount
                if e[2] == _RESERVED:
                    count.reserved -= amount
                e[2] = _GONE

    async def usage(self, charges: Sequence[RateCharge]) -> list[RateUsage]:
        with self._lock:
            now = self.clock()
            self._expire_locked(now)
            out = []
            for c in charges:
                if c.kind == "concurrent":
                    n = self._inflight.get(c.scope, 0)
                    out.append(RateUsage(c.scope, c.kind, c.limit, n, n,
                                         0.0 if n < c.limit else None))
                else:
                    count = self._count(c, now)
                    retry = (0.0 if count.used < c.limit
                             else count.retry_in(1, c.limit, c.window, now))
                    out.append(RateUsage(c.scope, c.kind, c.limit, count.used, count.reserved,
                                         retry))
            return out

    def peek(self, charges: Sequence[RateCharge]) -> list[int]:
        """What each charge's count holds now (``used`` of :meth:`usage`), without waiting:
        the load spread reads it for every candidate of a tie."""
        with self._lock:
            now = self.clock()
            out = []
            for c in charges:
                if c.kind == "concurrent":
                    out.append(self._inflight.get(c.scope, 0))
                else:
                    count = self._counts.get((c.scope, c.kind))
                    if count is not None:
                        count.trim(now - c.window)
                    out.append(0 if count is None else count.used)
            return out

    async def reconcile(self) -> int:
        with self._lock:
            return self._expire_locked(self.clock())

    @property
    def open_leases(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        return None


@hookimpl
def register_ratelimit_stores() -> list[RateLimitStoreType]:
    return [RateLimitStoreType("memory", MemoryRateLimitStore.from_options,
                               MemoryRateLimitOptions,
                               description="in process memory: exact, one process")]
