"""The ``redis`` budget backend: one budget and usage ledger for many router instances.

Amounts are integer nano-USD (rounded up; limits down) through :mod:`squirrel_models.sqlbudget`,
shared with the SQL backends. Every budget operation is one ``EVALSHA`` of a script in
:mod:`.scripts`: one round trip, atomic on the server. Leases are dated by the server's clock
unless a ``clock`` is given (tests freeze one).

Every call is bounded by the caller's deadline (the request's, or the manager's cleanup bound;
:func:`squirrel_models.budget.store_deadline`) and by the plugin's own timeouts (see
:mod:`.driver`). When Redis cannot be reached, ``on_unavailable`` decides: ``fail_closed``
raises :class:`.RedisUnavailable` (a ``BudgetStoreError``: budgeted requests are refused);
``fail_open`` logs a warning and enforces the same limits in this process's memory until Redis
answers again (:class:`Fallback`).

A hung server (SIGSTOPped, swapping) still takes commands it does not answer, and runs them
when it resumes, after their callers have left. A reserve whose caller gave up (or a release
that did not get through) is therefore *undone*: its id is kept, and this backend's next
script call first runs :data:`~.scripts.UNDO` for it, which drops the lease if the reserve
ran and leaves a tombstone that makes a reserve running later hold nothing. Either order
leaves nothing held, as the SQL backends release a reservation made after its caller left
(:class:`~squirrel_models.storethreads.StoreThreads`). Only a process that dies before Redis
answers again leaves such a lease to its expiry.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import anyio
import attrs
from squirrel_models.budget import Charge, LedgerRow, Reservation, ScopeUsage, StoreDeadline
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import Secret
from squirrel_models.slices import SlicedBudget, Slices, SliceState, SliceSync
from squirrel_models.sqlbudget import (
    BucketKey,
    Refusal,
    bucket_keys,
    from_nanos,
    ledger_row,
    ledger_values,
    reserve_shielded,
    to_nanos,
)

from . import scripts as S
from .client import APPLICATION, DATA_VERSION, RedisClient
from .client import text as _text
from .errors import RedisStoreError, RedisTimeout, RedisUnavailable
from .fallback import Fallback
from .options import RedisOptions

__all__ = ["APPLICATION", "DATA_VERSION", "RedisBudgetBackend"]

log = logging.getLogger("squirrel_models_redis")
#: Leases expired per script call (a reserve refused for want of headroom expires this many
#: at most before it looks again; reconcile loops).
EXPIRE_BATCH = 1000
#: Ledger rows deleted per script call by ``prune``.
PRUNE_BATCH = 5000
#: The least time a tombstone of an undone reservation is kept (seconds; at least the
#: reservation's ttl): a reserve the server runs later than this after its undo holds its
#: headroom until its lease expires, as before.
TOMBSTONE_S = 3600.0
#: Undone reservations kept for the next call while Redis does not answer; past this the
#: oldest are dropped (their leases, if any, expire).
MAX_UNDONE = 100_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEP = "\x1f"  # between scope and bucket in a hash field (neither holds control characters)


def _field(scope: str, bucket: str) -> str:
    return f"{scope}{_SEP}{bucket}"


def _score(at: datetime) -> int:
    """``at`` as integer microseconds since the epoch (exact in a sorted set's double)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


def reserve_args(rid: str, nanos: int, ttl: float, now: str, request_id: str,
                 keys: Sequence[BucketKey]) -> list[Any]:
    """ARGV of :data:`~.scripts.RESERVE`: reserve ``nanos`` on each bucket of ``keys``."""
    args: list[Any] = [rid, nanos, repr(float(ttl)), now, request_id, EXPIRE_BATCH]
    for k in keys:
        args += [_field(k.scope, k.bucket), k.limit]
    return args


def undo_args(now: str, keep: dict[str, float]) -> list[Any]:
    """ARGV of :data:`~.scripts.UNDO`: undo each reservation id, its tombstone kept that long."""
    args: list[Any] = [now]
    for rid, seconds in keep.items():
        args += [rid, repr(float(seconds))]
    return args


def _member(row: LedgerRow) -> tuple[str, str]:
    """A ledger row as a sorted-set member (JSON, unique) and its score."""
    values = list(ledger_values(row))
    values[0] = values[0].isoformat()
    return json.dumps([uuid.uuid4().hex, *values], separators=(",", ":")), str(_score(row.at))


def _row(member: Any) -> LedgerRow:
    _, at, *rest = json.loads(_text(member))
    # A slice's charge row, written by a script, gives ``at`` in seconds since the epoch.
    when = (datetime.fromtimestamp(at, UTC) if isinstance(at, int | float)
            else datetime.fromisoformat(at))
    return ledger_row([when, *rest])


@attrs.define
class RedisBudgetBackend(SlicedBudget):
    """Budgets and the usage ledger in Redis, shared by processes and hosts.

    The URL is read from ``$<options.url_env>`` when the backend is made (a missing variable
    is a ConfigError naming ``budget.options.url_env``), unless ``url`` is given. The driver
    is opened and the key prefix checked on first use. ``clock`` (seconds since the epoch)
    dates leases when set; by default the Redis server's clock does.
    """

    #: ``settle(..., ledger=row)`` writes the row in the settlement's script: both or neither.
    settles_with_ledger: ClassVar[bool] = True

    options: RedisOptions = attrs.field(factory=RedisOptions)
    clock: Callable[[], float] | None = None
    url: Secret | None = attrs.field(default=None, kw_only=True)
    _keys: list[str] = attrs.field(init=False)
    _client: RedisClient = attrs.field(init=False)
    _fallback: Fallback = attrs.field(init=False)
    #: Reservations given up on (id: tombstone seconds), undone by the next script call.
    _undone: dict[str, float] = attrs.field(init=False, factory=dict)
    #: Settlements that did not get through (id: SETTLE's ARGV), run by the next script call.
    _unsettled: dict[str, list[Any]] = attrs.field(init=False, factory=dict)
    _slices: Slices | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._client = RedisClient(self.options, self.url, "budget.options")
        self._keys = S.budget_keys(self.options.key_prefix)
        self._fallback = Fallback(self.options,
                                  lambda: self.clock() if self.clock is not None else time.time(),
                                  run=self._replay)
        if self.options.slices:
            if self.options.on_unavailable == "fail_open":
                # A slice's flush has no local stand-in: refused rather than half-honoured.
                raise ConfigError("fail_open cannot be combined with slices = true (a slice's "
                                  "flush needs redis); use fail_closed or turn slices off",
                                  field="budget.options.on_unavailable")
            self._slices = Slices(self, self.options.slice_options(),
                                  self.options.connect_timeout_s + self.options.operation_timeout_s)

    @property
    def key_prefix(self) -> str:
        return self.options.key_prefix

    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    # --- calls ---------------------------------------------------------------------------

    def _deadline(self) -> StoreDeadline:
        """The deadline of a call made now (take it before any cancel shield)."""
        return self._client.deadline()

    async def execute(self, operation: str, *args: Any, deadline: StoreDeadline | None = None
                      ) -> Any:
        """One raw command, bounded by ``deadline`` (now's if None), errors mapped."""
        return await self._client.execute(operation, *args, deadline=deadline)

    async def eval(self, operation: str, script: S.Script, keys: Sequence[str],
                   args: Sequence[Any], deadline: StoreDeadline | None = None) -> Any:
        """Run ``script`` on this backend's connection (one round trip; one more first when
        reservations given up on wait to be undone)."""
        if self._unsettled:
            await self._resettle(operation, deadline or self._deadline())
        if self._undone:
            await self._undo(operation, deadline or self._deadline())
        return await self._client.eval(operation, script, keys, args, deadline)

    def _settle_later(self, args: list[Any], exc: RedisStoreError) -> None:
        """Run SETTLE(``args``) again with the next call: it failed with ``exc`` before Redis
        could answer, maybe before it was sent (a pool busy until the cleanup bound, a
        refused connection). Left alone, its lease held the worst case until it expired and
        was then released: the attempt's spend was never committed. Settling is idempotent
        by id (a lease already settled is unknown: nothing happens). The ledger row goes
        with it only when the manager counts on that (``pending``: a timeout); after another
        error the manager records the row itself."""
        if not isinstance(exc, RedisUnavailable) or len(self._unsettled) >= MAX_UNDONE:
            return  # a script error would fail again; past the bound, left to expire
        if not (isinstance(exc, RedisTimeout) and exc.pending):
            args = [args[0], args[1], "", "0"]
        self._unsettled[args[0]] = args

    async def _resettle(self, operation: str, deadline: StoreDeadline) -> None:
        """Run the settlements of :meth:`_settle_later` before ``operation`` (its errors name
        that operation); those not reached stay for the next call."""
        pending, self._unsettled = self._unsettled, {}
        try:
            for rid, args in list(pending.items()):
                try:
                    await self._client.eval(operation, S.SETTLE, self._keys, args, deadline)
                except RedisUnavailable:
                    raise
                except RedisStoreError as exc:  # it would fail again: not kept for ever
                    log.error("settlement of reservation %s failed (%s): left to expire", rid,
                              exc)
                del pending[rid]
        finally:
            self._unsettled = {**pending, **self._unsettled}

    def _give_up(self, rid: str, ttl: float = 0.0) -> None:
        """Undo reservation ``rid`` at the next call: its reserve (or release) may still run
        on a server that took it without answering."""
        if len(self._undone) >= MAX_UNDONE:
            dropped = next(iter(self._undone))
            del self._undone[dropped]
            log.error("redis unreachable for long: %d reservations wait to be undone; the "
                      "oldest (%s) is left to expire", MAX_UNDONE, dropped)
        self._undone[rid] = max(float(ttl), TOMBSTONE_S)

    async def _undo(self, operation: str, deadline: StoreDeadline) -> None:
        """Run :data:`~.scripts.UNDO` for the reservations given up on, before ``operation``
        (its errors name that operation: it could not run); those it did not reach stay for
        the next call (it is idempotent: running one twice is harmless)."""
        undone, self._undone = self._undone, {}
        ids = list(undone)
        try:
            for i in range(0, len(ids), EXPIRE_BATCH):
                args = undo_args(self._now(), {rid: undone[rid]
                                               for rid in ids[i:i + EXPIRE_BATCH]})
                dropped = int(await self._client.eval(operation, S.UNDO, self._keys, args,
                                                      deadline))
                if dropped:
                    log.info("released %d reservation(s) whose callers had given up on a "
                             "hung redis", dropped)
                for rid in ids[i:i + EXPIRE_BATCH]:
                    del undone[rid]
        finally:
            self._undone = {**undone, **self._undone}

    async def open(self) -> None:
        """Connect and check the key prefix now rather than on first use. Raises
        RedisUnavailable if Redis cannot be reached."""
        await self._client.check()

    # --- budgets -------------------------------------------------------------------------

    async def direct_reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                             request_id: str = "") -> Reservation:
        keys = bucket_keys(charges, unbounded=self._slices is not None)
        rid = uuid.uuid4().hex
        args = reserve_args(rid, to_nanos(amount), ttl, self._now(), request_id, keys)
        deadline = self._deadline()  # before the shield hides the caller's

        async def make() -> Reservation:
            try:
                reply = await self.eval("reserve", S.RESERVE, self._keys, args, deadline)
            except RedisStoreError:
                self._give_up(rid, ttl)  # the server may have taken it: it may run later
                raise
            if int(reply[0]) == 2:  # undone meanwhile (cannot happen in one call): say so
                raise RedisStoreError("reserve", f"reservation {rid} was undone")
            if int(reply[0]) == 1:
                return Reservation(rid, amount, tuple(charges), float(_text(reply[1])),
                                   request_id)
            k = keys[int(reply[1]) - 1]
            raise Refusal(k.scope, k.bucket, k.limit, int(reply[2]), int(reply[3])).error(amount)

        async def local() -> Reservation:
            return await self._fallback.reserve(charges, amount, ttl=ttl, request_id=request_id)

        return await self._fallback.shared(
            "reserve", lambda: reserve_shielded(
                make, self._release_shared,
                left="it is released by this process's next call that reaches redis"),
            local, deadline)

    async def direct_settle(self, reservation: Reservation, amount: Decimal, *,
                            ledger: LedgerRow | None = None) -> Decimal:
        """Commit ``amount`` and drop the reservation (idempotent); ``ledger``, if given, is
        written in the same script when this settle commits. Returns the overspend."""
        nanos = to_nanos(amount)
        member, score = _member(ledger) if ledger is not None else ("", "0")
        if self._fallback.owns(reservation):
            return await self._fallback.settle(reservation, amount, nanos, member, score)
        deadline = self._deadline()

        async def shared() -> Decimal:
            args = [reservation.id, nanos, member, score]
            try:
                with anyio.CancelScope(shield=True):
                    held = await self.eval("settle", S.SETTLE, self._keys, args, deadline)
            except RedisStoreError as exc:
                self._settle_later(args, exc)
                raise
            over = 0 if held is None else max(nanos - int(held), 0)
            if over:
                # The manager logs it at WARNING, naming the model (TokenManager.settle).
                log.debug("reservation %s overspent by %s USD", reservation.id, from_nanos(over))
            return from_nanos(over)

        async def later() -> Decimal:
            self._fallback.defer("settle", S.SETTLE, [reservation.id, nanos, member, score])
            return max(amount - reservation.amount, Decimal(0))

        return await self._fallback.shared("settle", shared, later, deadline)

    async def direct_release(self, reservation: Reservation) -> None:
        if self._fallback.owns(reservation):
            await self._fallback.release(reservation)
            return
        deadline = self._deadline()

        async def shared() -> None:
            await self._release_shared(reservation, deadline)

        async def later() -> None:
            self._fallback.defer("release", S.RELEASE, [reservation.id])

        await self._fallback.shared("release", shared, later, deadline)

    async def slice_sync(self, syncs: Sequence[SliceSync], deadline: StoreDeadline,
                         lease_s: float) -> list[SliceState]:
        """One script applying the flushes of ``syncs`` (see :mod:`squirrel_models.slices`)."""
        args: list[Any] = [self._now(), repr(float(lease_s)), EXPIRE_BATCH]
        for sy in syncs:
            rows = []
            for n, row in sy.rows:
                member, score = _member(row)
                rows.append([n, member, score])
            one = {
                "i": sy.lease, "f": [_field(k.scope, k.bucket) for k in sy.keys],
                "l": [str(k.limit) for k in sy.keys], "sp": str(sy.spent), "ex": str(sy.excess),
                "nd": str(sy.need), "w": str(sy.want), "fr": sy.fraction, "c": sy.close,
                "k": sy.known, "r": rows,
                "sc": json.dumps(sorted({k.scope for k in sy.keys}))}
            if sy.holds is not None:
                one["h"] = str(sy.holds)
            args.append(json.dumps(one))
        with anyio.CancelScope(shield=True):
            reply = await self.eval("slice_sync", S.SLICE_SYNC, self._keys, args, deadline)
        out = []
        for sy, (amount, spent, excess, upto, room, expired, refused) in zip(syncs, reply,
                                                                             strict=True):
            refusal = None
            if refused:
                k = sy.keys[int(refused[0]) - 1]
                refusal = Refusal(k.scope, k.bucket, k.limit, int(refused[1]), int(refused[2]))
            out.append(SliceState(int(amount), int(spent), int(excess), int(upto), int(room),
                                  bool(int(expired)), refusal))
        return out

    async def _release_shared(self, reservation: Reservation,
                              deadline: StoreDeadline | None = None) -> None:
        deadline = deadline or self._deadline()
        with anyio.CancelScope(shield=True):
            try:
                await self.eval("release", S.RELEASE, self._keys, [reservation.id], deadline)
            except RedisStoreError:
                self._give_up(reservation.id)  # released by the next call, if not by this
                raise

    async def direct_usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        deadline = self._deadline()

        async def shared() -> list[ScopeUsage]:
            flat = await self.eval("usage", S.USAGE, self._keys,
                                   [self._now(), EXPIRE_BATCH,
                                    *[_field(c.scope, c.bucket) for c in charges]], deadline)
            return [ScopeUsage(c.scope, c.period, c.bucket, c.limit,
                               from_nanos(int(flat[2 * i])), from_nanos(int(flat[2 * i + 1])))
                    for i, c in enumerate(charges)]

        async def local() -> list[ScopeUsage]:
            return await self._fallback.usage(charges)

        return await self._fallback.shared("usage", shared, local, deadline)

    async def reconcile(self) -> int:
        """Release every lease past its expiry (their headroom returns), forget expired leases
        older than ``expired_retention_s`` and, with ``ledger_retention_days``, prune older
        ledger rows; returns how many leases were released."""
        async def shared() -> int:
            released = 0
            while True:
                n = int(await self.eval("reconcile", S.EXPIRE, self._keys,
                                        [self._now(), EXPIRE_BATCH,
                                         self.options.expired_retention_s]))
                released += n
                if n < EXPIRE_BATCH:
                    break
            days = self.options.ledger_retention_days
            if days is not None:
                now = self.clock() if self.clock is not None else await self._server_time()
                await self.prune(datetime.fromtimestamp(now, UTC) - timedelta(days=days))
            return released

        async def local() -> int:
            # fail_open with Redis down at start-up: the manager starts on local limits
            return await self._fallback.local.reconcile()

        return await self._fallback.shared("reconcile", shared, local, self._deadline())

    async def _replay(self, operation: str, script: S.Script, args: list[Any],
                      deadline: StoreDeadline) -> Any:
        return await self.eval(operation, script, self._keys, args, deadline)

    @property
    def deferred(self) -> int:
        """Settlements made while Redis was unreachable (``fail_open``), not yet replayed."""
        return self._fallback.deferred

    async def _server_time(self) -> float:
        return await self._client.server_time()

    async def audit(self) -> dict[str, Any]:
        """Open and expired leases, and buckets whose reserved total disagrees with their open
        leases (always empty unless the keys were tampered with). One snapshot."""
        reserved_flat, leases, n_expired = await self.eval("audit", S.AUDIT, self._keys, [])
        reserved = {_text(reserved_flat[i]): int(reserved_flat[i + 1])
                    for i in range(0, len(reserved_flat), 2)}
        held: dict[str, int] = {}
        for raw in leases:
            lease: dict[str, Any] = json.loads(_text(raw)) if raw else {"a": "0", "f": []}
            for f in lease["f"] or ():
                held[f] = held.get(f, 0) + int(lease["a"])
        wrong = sorted((*f.split(_SEP, 1), reserved.get(f, 0), held.get(f, 0))
                       for f in set(reserved) | set(held) if reserved.get(f, 0) != held.get(f, 0))
        return {"open": len(leases), "expired": int(n_expired), "mismatched": wrong}

    # --- ledger --------------------------------------------------------------------------

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        """Append one ledger row per attempt (costs rounded up to the nano-USD), in one
        command."""
        if not rows:
            return
        pairs: list[str] = []
        for r in rows:
            member, score = _member(r)
            pairs += [score, member]
        deadline = self._deadline()
        with anyio.CancelScope(shield=True):
            await self.execute("record", "ZADD", self._keys[5], *pairs, deadline=deadline)

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        """Ledger rows with ``since <= at < until``, oldest first (with slices, this process's
        settlements are flushed first)."""
        if self._slices is not None:
            await self._slices.flush_ledger()
        low = "-inf" if since is None else str(_score(since))
        high = "+inf" if until is None else f"({_score(until)}"
        raw = await self.execute("rows", "ZRANGEBYSCORE", self._keys[5], low, high)
        return [_row(m) for m in raw]

    async def prune(self, before: datetime) -> int:
        """Delete the ledger rows with ``at < before``, oldest first, :data:`PRUNE_BATCH` rows
        per script; returns how many. Budgets are untouched: committed spend stays, so it equals
        the remaining rows' costs plus the pruned costs, which are logged."""
        rows = 0
        nanos = 0
        while True:
            gone = await self.eval("prune", S.LEDGER_PRUNE, self._keys,
                                   [_score(before), PRUNE_BATCH])
            for m in gone:
                cost = _row(m).cost
                nanos += 0 if cost is None else to_nanos(cost)
            rows += len(gone)
            if len(gone) < PRUNE_BATCH:
                break
        if rows:
            log.info("pruned %d ledger row(s) before %s costing %s USD", rows,
                     before.isoformat(), from_nanos(nanos))
        return rows

    async def aclose(self) -> None:
        """Flush and hand back the slices (with ``slices``), try once more what waits for
        Redis (:meth:`_flush_pending`), then close the connection."""
        with anyio.CancelScope(shield=True):
            if self._slices is not None:
                await self._slices.aclose()
            await self._flush_pending()
            await self._client.aclose()

    async def _flush_pending(self) -> None:
        """Run the settlements, releases and undos that did not reach Redis (a cut
        connection; ``fail_open``'s replays), within the store's own timeout, and log at
        WARNING what is still left. They used to wait for a next call that a process
        shutting down cleanly never makes: each was left to its lease's expiry, which gives
        the worst case back without the attempt's spend."""
        if not (self._unsettled or self._undone or self._fallback.deferred):
            return
        deadline = self._deadline()
        error: RedisStoreError | None = None
        # the deadline bounds each call; this bounds them together (a server that answers
        # slowly would otherwise give every call the least time of a call past its deadline)
        with anyio.move_on_after(deadline.seconds):
            try:
                if self._unsettled:
                    await self._resettle("close", deadline)
                if self._undone:
                    await self._undo("close", deadline)
                if self._fallback.deferred:
                    await self._fallback.flush(deadline)
            except RedisStoreError as exc:
                error = exc
        left = len(self._unsettled) + self._fallback.deferred
        why = error or "out of time"
        if left:
            log.warning("redis unreachable at close (%s): %d settlement(s) and release(s) not "
                        "written to the shared budget (spend made while it was unreachable is "
                        "missing from it; held leases expire without their spend)", why, left)
        if self._undone:  # a reserve refused before it ran holds nothing: no spend is lost
            log.info("redis unreachable at close (%s): %d reservation(s) given up on not undone "
                     "(any that reached redis hold until their leases expire)", why,
                     len(self._undone))

