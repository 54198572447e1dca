"""Leased slices of a budget's room: durable budgets served from memory (issue 16).

A durable backend (SQLite, PostgreSQL) pays a store transaction for every reserve and every
settle. With slices on (``[budget.options] slices = true``), each process instead *leases* a
slice of a budget's room from the store and serves reservations from memory against it:

- A slice belongs to one set of charges (the ``(scope, bucket)`` keys an attempt is charged
  to) and is a lease in the store like a reservation: its room counts there as *reserved*, so
  ``committed + reserved <= limit`` holds in the store at every moment, across processes, and
  this process never grants locally more than its slices hold there.
- A reservation that fits the slice's free room is granted in memory; ``settle`` and
  ``release`` are memory operations too. Settled money and its ledger row wait for the next
  *flush*: one store transaction per flush interval (``slice_flush_s``) that moves the
  spend from the slice's reserved room to committed, writes the ledger rows of those
  settlements, renews the lease, and tops the room up or hands it back. Flushes are
  idempotent (cumulative amounts, numbered rows), so a flush whose outcome is unknown (a
  timeout) is simply sent again.
- The slice's size: room for ``slice_requests`` of the largest reservations seen recently,
  but at most ``slice_fraction`` of the room left in the store at that moment (so the room
  of a nearly spent budget is not all held by one process). When even the reservation at
  hand does not fit that fraction, the process hands back its slices' free room on every
  bucket the reservation touches and falls back to an ordinary reservation in the store:
  the last dollars are reserved one request at a time, and a request is never refused while
  this process holds the room it needs in a slice.
- A slice left unused for two flush intervals is handed back; ``aclose`` flushes every
  slice and hands back its room (drops the lease).
- A process that dies (SIGKILL, power loss) leaves its slices held until their leases
  expire (``slice_lease_s``, renewed by every flush); then the store charges each in full,
  since any of it may have been spent, and writes a ledger row naming it (request id
  ``slice:<lease>``, outcome ``charged``). A crash loses room for a while, never money: the
  committed spend still equals the sum of the ledger's costs. A flush that arrives after
  its slice expired (a process stalled longer than the lease) writes its rows and lowers
  that charge row by what they account for; once the process knows the slice was charged
  (it then grants nothing from it), its flushes also lower the charge to what its
  reservations still open in the slice hold (``SliceSync.holds``), down to nothing when
  they have ended: a live process's stall loses no room for the rest of the period.
- ``usage`` answers from the store, adding this process's unflushed settlements (committed)
  and taking them off reserved; other processes' settlements show up at their next flush
  (at most ``slice_flush_s`` later; committed + reserved is exact either way). The ledger
  (``rows``, ``summarize``) is flushed before it is read here; rows of other processes may
  lag by one flush interval.
- Deadlines: a reservation served from memory makes no store call. One that needs a store
  call (a new slice, a top-up, the fallback) takes its deadline
  (:func:`~squirrel_models.budget.store_deadline`) before waiting for the slices' lock, waits
  for it within the caller's cancel scope, and runs the store call shielded but bounded by
  that deadline; an unknown outcome leaves the slice's room at the smaller of before and
  after (never more than the store surely holds). Flushes run in a background task with the
  backend's own timeout.

The backend provides :class:`SliceStore`: its own (unsliced) budget operations and one
``slice_sync`` transaction; :class:`Slices` does the rest.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
import attrs

from .budget import Charge, LedgerRow, Reservation, ScopeUsage, StoreDeadline, store_deadline
from .errors import BudgetStoreError, BudgetStoreTimeout
from .forks import forget_in_child
from .ledger import CHARGE_OUTCOME
from .sliceoptions import (
    SliceFields,
    SliceOptions,
    slice_count,
    slice_fraction,
    slice_seconds,
    slices_flag,
)
from .sqlbudget import BucketKey, Refusal, bucket_keys, from_nanos, to_nanos

__all__ = [
    "SLICE_OUTCOME",
    "SliceFields",
    "SliceOptions",
    "SliceState",
    "SliceStore",
    "SliceSync",
    "SlicedBudget",
    "Slices",
    "slice_charge_row",
    "slice_count",
    "slice_fraction",
    "slice_seconds",
    "slice_target",
    "slices_flag",
]

log = logging.getLogger("squirrel_models.slices")

#: The ledger row that charges an expired slice in full.
SLICE_OUTCOME = CHARGE_OUTCOME
SLICE_PROVIDER = "(slice)"
SLICE_MODEL = "(unflushed)"
#: Local reservation ids start with this (the store never sees them).
_LOCAL = "slice-"


@attrs.frozen
class SliceSync:
    """One slice's flush, as the store applies it (amounts in nano-USD).

    ``spent`` and ``excess``: cumulative amounts settled through the slice within its room and
    beyond it (an overspend); the store applies what it has not applied yet. ``rows``:
    ``(number, row)`` pairs, the store writes those numbered above the last it wrote.
    ``need``/``want``: the slice's room after the flush must be at least ``need`` (else
    nothing is added, and ``refusal`` says why) and is topped up to ``want`` (at most
    ``fraction`` of the room left, but always ``need``) or handed back down to it. ``close``:
    drop the lease if no room is left. ``known``: this lease was flushed before. ``holds``:
    for a slice this process knows the store charged in full (it grants nothing from it any
    more), what its reservations still open in it hold; the store lowers that charge, after
    the spend flushed here, to at most this (None: not known to be charged)."""

    lease: str
    keys: tuple[BucketKey, ...]
    spent: int
    excess: int
    need: int
    want: int
    fraction: float
    rows: tuple[tuple[int, Any], ...] = ()
    close: bool = False
    known: bool = False
    holds: int | None = None


@attrs.frozen
class SliceState:
    """The store's answer for one slice: its room (``amount``; 0 once expired), the
    cumulative ``spent`` and ``excess`` it has applied, the last row number written, the room
    left on the tightest key, whether the lease had expired, and the first key without room
    for ``need``."""

    amount: int
    spent: int
    excess: int
    rows_upto: int
    room: int
    expired: bool
    refusal: Refusal | None = None


def slice_target(amount: int, need: int, want: int, room: int, fraction: float) -> int | None:
    """The slice's room after a flush, from its room now (``amount``), what it needs and
    wants, and the store's room left: handed back down to ``want``, or topped up towards it
    by at most ``fraction`` of ``room`` (but at least to ``need``); None if ``need`` does not
    fit the room at all."""
    if want <= amount:
        return max(want, 0)
    extra = min(want - amount, room, max(need - amount, int(room * fraction)))
    if amount + extra < need:
        return None
    return amount + extra


def slice_charge_row(lease: str, amount: int, scopes: Sequence[str], now: float) -> LedgerRow:
    """The ledger row of an expired slice charged in full (``amount`` nano-USD)."""
    return LedgerRow(f"slice:{lease}", 0, SLICE_PROVIDER, SLICE_MODEL, SLICE_OUTCOME,
                     cost=from_nanos(amount), scopes=tuple(scopes),
                     at=datetime.fromtimestamp(now, UTC), usage_source="slice")


class SliceStore(Protocol):
    """What a backend gives :class:`Slices`: its own budget operations, unsliced, and one
    transaction applying a batch of flushes."""

    async def direct_reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                             request_id: str = "") -> Reservation: ...

    async def direct_settle(self, reservation: Reservation, amount: Decimal, *,
                            ledger: LedgerRow | None = None) -> Decimal: ...

    async def direct_release(self, reservation: Reservation) -> None: ...

    async def direct_usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]: ...

    async def slice_sync(self, syncs: Sequence[SliceSync], deadline: StoreDeadline,
                         lease_s: float) -> list[SliceState]: ...



class SlicedBudget:
    """The budget operations of a backend that can serve leased slices (a base class): each
    goes to the backend's :class:`Slices` when ``slices`` is on, else to its own unsliced
    ``direct_*`` operation (:class:`SliceStore`)."""

    __slots__ = ()
    _slices: Slices | None

    if TYPE_CHECKING:
        async def direct_reserve(self, charges: Sequence[Charge], amount: Decimal, *,
                                 ttl: float, request_id: str = "") -> Reservation: ...

        async def direct_settle(self, reservation: Reservation, amount: Decimal, *,
                                ledger: LedgerRow | None = None) -> Decimal: ...

        async def direct_release(self, reservation: Reservation) -> None: ...

        async def direct_usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]: ...

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        if self._slices is not None:
            return await self._slices.reserve(charges, amount, ttl=ttl, request_id=request_id)
        return await self.direct_reserve(charges, amount, ttl=ttl, request_id=request_id)

    async def settle(self, reservation: Reservation, amount: Decimal, *,
                     ledger: LedgerRow | None = None) -> Decimal:
        """Commit ``amount`` and drop the reservation (idempotent); ``ledger``, if given, is
        written in the same transaction when this settle commits (with slices: in the flush
        that commits it). Returns the overspend."""
        if self._slices is not None:
            return await self._slices.settle(reservation, amount, ledger=ledger)
        return await self.direct_settle(reservation, amount, ledger=ledger)

    async def release(self, reservation: Reservation) -> None:
        if self._slices is not None:
            await self._slices.release(reservation)
        else:
            await self.direct_release(reservation)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        if self._slices is not None:
            return await self._slices.usage(charges)
        return await self.direct_usage(charges)

    async def flush_slices(self) -> None:
        """Flush this process's slices now, as the background flush does every
        ``slice_flush_s`` (nothing without slices)."""
        if self._slices is not None:
            await self._slices.flush()

@attrs.define(eq=False)
class _Lease:
    id: str
    keys: tuple[BucketKey, ...]
    room: int = 0        # what this process may use: held + (spent - flushed) <= room
    held: int = 0        # open local reservations
    spent: int = 0       # cumulative, within the room
    excess: int = 0      # cumulative, beyond it
    flushed: int = 0     # cumulative spent the store has applied (the frame of ``room``)
    flushed_excess: int = 0
    rows: list[tuple[int, LedgerRow]] = attrs.field(factory=list)
    next_row: int = 0
    worst: int = 0       # the largest reservation since the last flush
    last_worst: int = 0
    used_at: float = 0.0
    renew_at: float = 0.0
    known: bool = False
    expired: bool = False
    dropped: bool = False  # the store forgot it (handed back, or expired and done)
    holds_sent: int | None = None  # ``held`` as the store last had it, once expired

    def used(self) -> int:
        return self.held + self.spent - self.flushed

    def free(self) -> int:
        return 0 if self.expired else self.room - self.used()

    def pending(self) -> bool:
        return bool(self.rows) or self.spent != self.flushed or self.excess != self.flushed_excess


@attrs.define(eq=False)
class Slices:
    """Serves a backend's reservations from leased slices (see the module docstring)."""

    store: SliceStore
    options: SliceOptions
    cap: float  # the backend's own timeout for a store call
    _leases: dict[tuple[BucketKey, ...], _Lease] = attrs.field(factory=dict, init=False)
    _retired: list[_Lease] = attrs.field(factory=list, init=False)  # expired, still in use
    # Local reservations: (slice, nano-USD held, expiry on time.monotonic()).
    _local: dict[str, tuple[_Lease, int, float]] = attrs.field(factory=dict, init=False)
    # Local reservations past their expiry (room given back); a late settle still commits.
    _late: dict[str, tuple[_Lease, int, float]] = attrs.field(factory=dict, init=False)
    _keys: dict[tuple[Charge, ...], tuple[BucketKey, ...]] = attrs.field(factory=dict, init=False)
    _lock: anyio.Lock | None = attrs.field(default=None, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _prefix: str = attrs.field(factory=lambda: f"{_LOCAL}{uuid.uuid4().hex[:12]}-", init=False)
    _keeper: Any = attrs.field(default=None, init=False)  # the event loop it runs in
    _tasks: set[Any] = attrs.field(factory=set, init=False)
    _keeper_scope: anyio.CancelScope | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The slices are the parent's leases: served from here too, the same room was spent
        # twice (and the child's reservation ids repeated the parent's). The child leases its
        # own; the parent's reservations under way are the parent's to settle.
        self._leases, self._retired, self._local, self._late = {}, [], {}, {}
        self._lock, self._seq = None, 0
        self._prefix = f"{_LOCAL}{uuid.uuid4().hex[:12]}-"
        self._keeper, self._tasks, self._keeper_scope = None, set(), None

    # --- reservations --------------------------------------------------------------------

    def _keys_of(self, charges: Sequence[Charge]) -> tuple[BucketKey, ...]:
        t = tuple(charges)
        keys = self._keys.get(t)
        if keys is None:
            if len(self._keys) > 1024:
                self._keys.clear()
            keys = self._keys[t] = tuple(bucket_keys(charges, unbounded=True))
        return keys

    def _grant(self, lease: _Lease, nanos: int, amount: Decimal, charges: Sequence[Charge],
               ttl: float, request_id: str) -> Reservation:
        lease.held += nanos
        lease.used_at = time.monotonic()
        self._seq += 1
        rid = f"{self._prefix}{self._seq}"
        # Its expiry here on the monotonic clock: this process alone owns it, and a wall-clock
        # jump forward (NTP, a suspended VM) must not release it while its request runs (its
        # settle would then be counted as overspend). ``expires_at`` is for people: wall time.
        self._local[rid] = (lease, nanos, time.monotonic() + ttl)
        return Reservation(rid, amount, tuple(charges), time.time() + ttl, request_id)

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        if self._closed:
            raise BudgetStoreError("the budget backend is closed", operation="reserve")
        nanos = to_nanos(amount)
        keys = self._keys_of(charges)
        lease = self._leases.get(keys)
        if lease is not None:
            lease.worst = max(lease.worst, nanos)
            if lease.free() >= nanos:
                return self._grant(lease, nanos, amount, charges, ttl, request_id)
        return await self._reserve_slow(charges, keys, nanos, amount, ttl, request_id)

    async def _reserve_slow(self, charges: Sequence[Charge], keys: tuple[BucketKey, ...],
                            nanos: int, amount: Decimal, ttl: float, request_id: str
                            ) -> Reservation:
        deadline = store_deadline(self.cap)  # before any shield hides the caller's
        self._start_keeper()
        try:
            return await self._reserve_locked(charges, keys, nanos, amount, ttl, request_id,
                                              deadline)
        except BudgetStoreTimeout as exc:
            if exc.by_deadline:  # the caller's deadline passed: its cancellation comes first
                await anyio.lowlevel.checkpoint_if_cancelled()
            raise

    async def _reserve_locked(self, charges: Sequence[Charge], keys: tuple[BucketKey, ...],
                              nanos: int, amount: Decimal, ttl: float, request_id: str,
                              deadline: StoreDeadline) -> Reservation:
        async with self._locked():
            lease = self._leases.get(keys)
            if lease is None or lease.expired:
                if lease is not None:  # flushed on until its reservations end
                    self._retired.append(lease)
                lease = self._leases[keys] = _Lease(uuid.uuid4().hex, keys)
            lease.worst = max(lease.worst, nanos)
            if lease.free() >= nanos:
                return self._grant(lease, nanos, amount, charges, ttl, request_id)
            need = lease.used() + nanos
            size = self.options.requests * max(lease.worst, lease.last_worst, nanos)
            await self._sync([(lease, need, need + size, False)], deadline)
            if lease.free() >= nanos:
                return self._grant(lease, nanos, amount, charges, ttl, request_id)
            # Little room left: hand back the free room of every slice on these buckets, then
            # reserve this request alone in the store.
            shared = set(keys)
            back = [(le, le.used(), le.used(), le.held == 0)
                    for le in self._leases.values()
                    if le.room > le.used() and not le.expired and shared.intersection(le.keys)]
            if back:
                await self._sync(back, deadline)
        return await self.store.direct_reserve(charges, amount, ttl=ttl, request_id=request_id)

    async def settle(self, reservation: Reservation, amount: Decimal, *,
                     ledger: LedgerRow | None = None) -> Decimal:
        if not reservation.id.startswith(_LOCAL):
            return await self.store.direct_settle(reservation, amount, ledger=ledger)
        nanos = to_nanos(amount)
        entry = self._local.pop(reservation.id, None) or self._late.pop(reservation.id, None)
        if entry is None:
            return Decimal(0)  # settled or released before: idempotent
        lease, held, _ = entry
        lease.held -= held
        if lease.dropped:
            # A late settle (its reservation expired first) on a slice the store has dropped:
            # a new slice carries it. The old one's cumulative amounts, sent again, would be
            # applied a second time by a store that no longer knows what it applied.
            lease = _Lease(uuid.uuid4().hex, lease.keys)
        if self._leases.get(lease.keys) is not lease and lease not in self._retired:
            self._retired.append(lease)  # a late settle on a slice handed back: flush it still
        # Within the slice: what it reserved, plus any free room (an overspend); an expired
        # slice was charged with this reservation in it, and has no free room.
        covered = min(nanos, held if lease.expired else max(0, lease.free()))
        lease.spent += covered
        lease.excess += nanos - covered
        if ledger is not None:
            lease.next_row += 1
            lease.rows.append((lease.next_row, ledger))
        return from_nanos(max(nanos - held, 0))

    async def release(self, reservation: Reservation) -> None:
        if not reservation.id.startswith(_LOCAL):
            await self.store.direct_release(reservation)
            return
        entry = self._local.pop(reservation.id, None)
        if entry is not None:
            entry[0].held -= entry[1]
        self._late.pop(reservation.id, None)

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        """The store's state, with this process's unflushed settlements counted as committed
        (they are still reserved in the store until the next flush)."""
        states = await self.store.direct_usage(charges)
        out = []
        for c, u in zip(charges, states, strict=True):
            moved = extra = 0
            for lease in self._all():
                if any(k.scope == c.scope and k.bucket == c.bucket for k in lease.keys):
                    if not lease.expired:
                        moved += lease.spent - lease.flushed
                    extra += lease.excess - lease.flushed_excess
            if moved or extra:
                u = attrs.evolve(u, committed=u.committed + from_nanos(moved + extra),
                                 reserved=max(u.reserved - from_nanos(moved), Decimal(0)))
            out.append(u)
        return out

    # --- flushing ------------------------------------------------------------------------

    def _all(self) -> list[_Lease]:
        return [*self._leases.values(), *self._retired]

    def _locked(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def _sync(self, items: Sequence[tuple[_Lease, int, int, bool]],
                    deadline: StoreDeadline) -> None:
        """Flush ``items`` ``(lease, need, want, close)`` (need and want: room to use, in this
        process's terms) in one store transaction; the slices' lock is held."""
        syncs = []
        for lease, need, want, close in items:
            d = lease.spent - lease.flushed
            # Until the answer, use no more than the smaller of the room before and after
            # (in this process's terms, which count the ``d`` being flushed as used).
            lease.room = min(lease.room, want)
            syncs.append(SliceSync(lease.id, lease.keys, lease.spent, lease.excess,
                                   max(need - d, 0), max(want - d, 0), self.options.fraction,
                                   tuple(lease.rows), close and lease.held == 0, lease.known,
                                   lease.held if lease.expired else None))
            lease.last_worst, lease.worst = lease.worst, 0
        with anyio.CancelScope(shield=True):
            states = await self.store.slice_sync(syncs, deadline, self.options.lease_s)
        renew = time.monotonic() + self.options.lease_s / 3
        for (lease, *_), sync, st in zip(items, syncs, states, strict=True):
            lease.known = True
            lease.flushed, lease.flushed_excess = st.spent, st.excess
            if lease.spent < st.spent:  # cannot happen: the store applies what it is sent
                lease.spent = st.spent
            lease.rows = [(n, r) for n, r in lease.rows if n > st.rows_upto]
            lease.room = st.amount
            lease.renew_at = renew
            lease.holds_sent = sync.holds
            if st.expired and not lease.expired:
                lease.expired = True
                log.warning("budget slice %s expired before this process flushed it: the store "
                            "charged its room in full (this process stalled longer than "
                            "slice_lease_s = %s s)", lease.id, self.options.lease_s)
            # An expired slice is done once the store has its charge lowered to nothing.
            done = (sync.close and st.amount == 0) or (lease.expired and sync.holds == 0)
            if done and not lease.pending():
                lease.dropped = True
                if self._leases.get(lease.keys) is lease:
                    del self._leases[lease.keys]
                elif lease in self._retired:
                    self._retired.remove(lease)

    async def flush(self, *, close: bool = False) -> None:
        """Flush every slice with settlements, rows or a lease to renew; hand back the room of
        slices unused for two flush intervals (``close``: of every slice, dropping the leases).
        Local reservations past their expiry are released first (as ``reconcile`` would)."""
        if not self._leases and not self._retired:
            return
        deadline = store_deadline(self.cap)
        async with self._locked():
            now = time.monotonic()
            for rid, (lease, held, expires) in list(self._local.items()):
                if expires <= now:  # its room comes back; a late settle still commits
                    del self._local[rid]
                    lease.held -= held
                    self._late[rid] = (lease, 0, expires)
            for rid, (_, _, expires) in list(self._late.items()):
                if expires <= now - 86400:  # nobody settles a day late
                    del self._late[rid]
            idle_after = 2 * self.options.flush_s
            items = []
            for lease in self._all():
                used = lease.used()
                if close or (now - lease.used_at > idle_after and lease.held == 0):
                    items.append((lease, used, used, True))
                elif (lease.pending() or now >= lease.renew_at
                      or (lease.expired and lease.held != lease.holds_sent)):
                    items.append((lease, used, max(lease.room, used), False))
            if items:
                await self._sync(items, deadline)

    async def flush_ledger(self) -> None:
        """Flush so that the ledger holds every settlement of this process (a read of it)."""
        if any(lease.pending() for lease in self._all()):
            await self.flush()

    # --- the background flush ------------------------------------------------------------

    def _start_keeper(self) -> None:
        """Start the background flush in the running event loop (once per event loop: a
        backend used from a second ``anyio.run`` gets a keeper there too)."""
        loop = _current_loop()
        if self._keeper == loop:
            return
        self._keeper = loop
        self._keeper_scope = scope = anyio.CancelScope()
        if isinstance(loop, _TrioRun):
            import trio  # type: ignore[import-not-found,unused-ignore]

            trio.lowlevel.spawn_system_task(self._keep, scope)
        else:
            self._tasks.add(task := loop.create_task(self._keep(scope)))
            task.add_done_callback(self._tasks.discard)

    async def _keep(self, scope: anyio.CancelScope) -> None:
        with scope:
            while not self._closed:
                await anyio.sleep(self.options.flush_s)
                try:
                    await self.flush()
                except BudgetStoreError as exc:
                    log.warning("budget slices not flushed (%s); retrying in %s s", exc,
                                self.options.flush_s)
                except Exception:  # a background task must not die: the next flush retries
                    log.exception("budget slices not flushed; retrying in %s s",
                                  self.options.flush_s)

    async def aclose(self) -> None:
        """Stop the background flush, flush every slice and hand its room back."""
        self._closed = True
        if self._keeper_scope is not None:
            self._keeper_scope.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await self.flush(close=True)
            except BudgetStoreError as exc:
                log.warning("budget slices not handed back at close (%s): their leases expire "
                            "in %s s and are then charged in full", exc, self.options.lease_s)


@attrs.frozen
class _TrioRun:
    root: Any


def _current_loop() -> Any:
    """The running event loop (asyncio), or the running trio run (its root task)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend
        import trio  # type: ignore[import-not-found,unused-ignore]

        return _TrioRun(trio.lowlevel.current_root_task())
