"""Budgets: limits on scopes and periods, and the backend contract that enforces them.

A :class:`BudgetLimit` caps spend on a *scope* over a *period*:

- scopes: ``global``, ``provider:<name>``, ``model:<provider>/<model>``, ``key:<key>`` (one
  caller-supplied key, such as a team) and ``key:*`` (every key separately);
- periods: ``total``, ``day`` and ``month`` (calendar, UTC).

For each attempt the core computes the :class:`Charge` objects that apply (one per matching
limit, each naming the period *bucket* at reservation time, so a reservation made before
midnight settles into the day it was made) and asks the backend to reserve the attempt's
worst-case cost against all of them at once.

Backend contract (checked by the conformance suite in :mod:`squirrel_models.testing`):

- ``reserve`` is atomic: either every charge gets the amount reserved or none does and
  :class:`~squirrel_models.errors.BudgetExceeded` names the first scope without headroom.
  At every moment ``committed + reserved <= limit`` for every bucket.
- ``settle`` turns a reservation into committed spend of the actual amount; an amount above
  the reservation is still committed in full (spent money is never hidden) and returned as
  the overspend. ``release`` drops a reservation. Both are idempotent.
- A reservation is a lease: past ``expires_at`` a backend may release it (``reconcile``). A
  settle that arrives after expiry still commits the spend.
- Optional, for a backend that also keeps the ledger (:class:`LedgerBackend`): a class
  attribute ``settles_with_ledger = True`` promises that ``settle(reservation, amount,
  ledger=row)`` writes ``row`` in the same transaction as the settlement, and only when that
  settle commits (a repeated settle, or one of a released reservation, writes no row). The
  manager then hands each attempt's row to the settle that charges it, so a process killed at
  any moment never leaves spend committed without its ledger row (committed spend always equals
  the sum of the ledger's costs), and leaves only the attempts that settled nothing (refusals,
  released failures, skips) to ``record`` at the end of the request. A backend without the
  attribute is never passed ``ledger`` and keeps the two-argument ``settle``: its rows are all
  recorded at the end of the request. The promise belongs to the class that declares it: a
  subclass that overrides ``settle`` or ``record`` without declaring it again gets the
  end-of-request behaviour (see :func:`settles_with_ledger`).
- Optional, for a backend that keeps the ledger: ``async summarize(by, since=None,
  until=None)`` (:class:`LedgerSummaries`) aggregates the rows with ``since <= at < until`` in
  the backend's own store, so ``squirrel usage`` need not read every row. It returns exactly
  what :func:`squirrel_models.ledger.summarize` returns for ``rows(since, until)`` and ``by``:
  the same groups, keys, types (``Decimal`` costs with the same exponents), rounding and order;
  an unknown ``by`` raises ValueError. Without it the CLI reads ``rows`` and summarizes them.
- Optional, for a backend that keeps the ledger: ``async prune(before) -> int``
  (:class:`LedgerPruning`) deletes the ledger rows with ``at < before`` (an aware datetime) and
  returns how many it deleted; ``squirrel ledger prune`` uses it. Retention touches the ledger
  only: committed spend in the buckets stays, so after a prune committed spend equals the sum
  of the remaining rows' costs plus the costs of the rows pruned (a backend logs each prune's
  row count and cost at INFO, so the equation stays checkable). A backend may delete in
  batches, each its own transaction, so writers are never blocked for long; a row written
  concurrently with ``at >= before`` is never touched. Backends with a durable ledger also take
  a ``ledger_retention_days`` option applied by ``reconcile`` (which the manager calls at
  start-up).
- Every store call ends by the caller's deadline. The manager calls ``reserve`` (and the
  ``usage`` it reads for metrics) inside the request's deadline, and ``settle``, ``release``
  and ``record`` shielded from cancellation, inside a cleanup bound (the request's deadline
  plus :data:`CLEANUP_GRACE`; :func:`cleanup_bound`). A backend whose calls block (worker
  threads, a database server) reads the bound with :func:`store_deadline` (the earlier of
  ``anyio.current_effective_deadline()``, taken before any cancel shield of its own, and the
  cleanup bound) and hands it to its driver (SQLite's busy timeout, PostgreSQL's
  ``statement_timeout``, the waits for a connection), so the call itself stops, not only the
  wait for it; it then raises :class:`~squirrel_models.errors.BudgetStoreTimeout` with
  ``by_deadline`` set, and the manager ends the request with ``DeadlineExceeded``. A
  reservation whose ``settle`` or ``release`` could not run in time stays a lease: its worst
  case stays held (the budget never overspends) until ``reconcile`` releases it after
  ``expires_at``. The *wait* for a call ends by the bound too, not only its database work: a
  backend that runs calls in worker threads uses
  :class:`~squirrel_models.storethreads.StoreThreads`, which stops waiting then and lets the
  call finish in the background (``BudgetStoreTimeout.pending``; a settlement with its ledger
  row still commits, and the manager does not write that row again).
- Optional: a class attribute ``nonblocking = True`` promises that no method ever suspends
  (no ``await`` inside, as in the in-memory backend). Cancellation cannot interrupt such a
  call, so the manager then skips the cancel shield it otherwise puts around settle, release
  and record (two cancel scopes per call, a large part of a fast request's overhead).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from .errors import BudgetStoreError, BudgetStoreTimeout, ConfigError, shown
from .fieldchecks import check_scope, number_problem

__all__ = [
    "BudgetBackend",
    "BudgetBackendType",
    "CLEANUP_GRACE",
    "CLEANUP_TIMEOUT",
    "QUEUE_MIN_S",
    "STORE_MIN_S",
    "BudgetLimit",
    "Charge",
    "LedgerBackend",
    "LedgerPruning",
    "LedgerRow",
    "LedgerSummaries",
    "PendingRow",
    "Reservation",
    "ScopeUsage",
    "SettlesWithLedger",
    "StoreDeadline",
    "bucket_for",
    "charges_for",
    "cleanup_bound",
    "limit_charges",
    "pending_row",
    "records_pending",
    "reserve_shielded",
    "settles_with_ledger",
    "store_deadline",
]

log = logging.getLogger("squirrel_models")

#: How long the store calls of a request's cleanup (settle, release, its ledger rows) may run
#: past the request's deadline: a store slower than this is stopped, and its lease is left to
#: expire (see the module docstring).
CLEANUP_GRACE = 0.25
#: The most any cleanup may take, however far the request's deadline is (a backstop: the
#: shield around cleanup is cancelled then).
CLEANUP_TIMEOUT = 5.0
#: The least time a store call's database work is given, even at or past its deadline: one
#: short try (a busy timeout, a statement timeout), so a healthy store still settles an
#: attempt that ended right at its deadline.
STORE_MIN_S = 0.1
#: The least time a store call may wait for this process's own resources (a shared
#: connection, a pooled one, a worker thread), which others hold only for their own bounded
#: calls: a busy machine must not turn a healthy store's queue into a lost settlement.
QUEUE_MIN_S = CLEANUP_TIMEOUT

#: The cleanup bound of the running task, on anyio's clock (see :func:`cleanup_bound`).
_cleanup_until: contextvars.ContextVar[float] = contextvars.ContextVar(
    "squirrel_cleanup_until", default=math.inf)


@contextlib.contextmanager
def cleanup_bound(until: float) -> Iterator[None]:
    """Within the block, budget store calls end by ``until`` (anyio's clock) as well as by the
    effective deadline: what the manager's shielded cleanup uses, since a shield hides the
    request's deadline and cancelling the shield would cut non-store work (closing a stream)
    too."""
    token = _cleanup_until.set(min(until, _cleanup_until.get()))
    try:
        yield
    finally:
        _cleanup_until.reset(token)

Period = Literal["total", "day", "month"]
PERIODS: tuple[str, ...] = ("total", "day", "month")
#: The largest budget limit in USD: the durable backends count nano-dollars in 64-bit integers.
MAX_LIMIT = Decimal(10**9)


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(f"expected an amount, got {shown(value)}", field="limit")
    if isinstance(value, float):
        value = repr(value)
    elif isinstance(value, str) and (why := number_problem(value, signed=True)) is not None:
        raise ConfigError(f"{shown(value)} {why}", field="limit")
    try:
        return Decimal(value)
    except (ArithmeticError, TypeError, ValueError):
        raise ConfigError(f"expected an amount, got {shown(value)}", field="limit") from None


@attrs.frozen
class BudgetLimit:
    """At most ``limit`` USD on ``scope`` per ``period``."""

    scope: str = attrs.field(validator=check_scope)
    period: Period = "total"
    limit: Decimal = attrs.field(kw_only=True, converter=_to_decimal)

    def __attrs_post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ConfigError(f"unknown period {shown(self.period)}; use total, day or month",
                              field="period")
        if not self.limit.is_finite() or self.limit < 0:
            raise ConfigError(f"must be a finite amount >= 0, got {self.limit}", field="limit")
        if self.limit > MAX_LIMIT:
            raise ConfigError(f"must be at most {MAX_LIMIT:,} USD, got {self.limit:.6g} "
                              "(leave the limit out for no budget)", field="limit")


@attrs.frozen
class Charge:
    """One limit applied to one attempt: ``scope`` in period ``bucket`` capped at ``limit``."""

    scope: str
    period: str
    bucket: str
    limit: Decimal


@attrs.frozen
class Reservation:
    """Headroom held for one attempt until it is settled or released (a lease)."""

    id: str
    amount: Decimal
    charges: tuple[Charge, ...]
    expires_at: float
    request_id: str = ""


@attrs.frozen
class ScopeUsage:
    """The state of one bucket: limit, committed spend and reserved headroom."""

    scope: str
    period: str
    bucket: str
    limit: Decimal
    committed: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(self.limit - self.committed - self.reserved, Decimal(0))

    @property
    def utilization(self) -> float:
        return float((self.committed + self.reserved) / self.limit) if self.limit else 1.0


def bucket_for(period: str, now: datetime) -> str:
    """The bucket name of ``period`` at ``now`` (UTC): ``total``, ``2026-11-26``, ``2026-11``."""
    now = now.astimezone(UTC)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "month":
        return now.strftime("%Y-%m")
    return "total"


def charges_for(
    limits: Iterable[BudgetLimit],
    *,
    provider: str,
    model_id: str,
    budget_key: str | None,
    now: datetime,
) -> tuple[Charge, ...]:
    """The charges that apply to an attempt on ``model_id`` for ``budget_key`` at ``now``.

    A limit on the caller's own key (``key:vip``) replaces the ``key:*`` limit of the same
    period for that key, so a specific key may get more than the default as well as less;
    ``key:*`` still applies in the periods the specific key does not set. Two limits on the
    same scope and period otherwise make one charge with the tighter limit, so an amount is
    never counted twice.
    """
    limits = tuple(limits)
    own: set[str] = set()
    if budget_key is not None:
        own = {lim.period for lim in limits if lim.scope == f"key:{budget_key}"}
    out: dict[tuple[str, str], Charge] = {}
    for lim in limits:
        kind, _, name = lim.scope.partition(":")
        if lim.scope == "global":
            scope = "global"
        elif (kind == "provider" and name == provider) or (kind == "model" and name == model_id):
            scope = lim.scope
        elif kind == "key" and budget_key is not None and (
                name == budget_key or (name == "*" and lim.period not in own)):
            scope = f"key:{budget_key}"
        else:
            continue
        charge = Charge(scope, lim.period, bucket_for(lim.period, now), lim.limit)
        key = (charge.scope, charge.bucket)
        if key not in out or charge.limit < out[key].limit:
            out[key] = charge
    return tuple(out.values())


def limit_charges(limits: Iterable[BudgetLimit], *, budget_key: str | None, now: datetime
                  ) -> tuple[Charge, ...]:
    """One charge per configured limit, as ``squirrel budget`` lists them: every limit on a
    named scope, and ``key:*`` as ``key:<budget_key>`` (left out without a key, or where that
    key's own limit replaces it, as in :func:`charges_for`)."""
    limits = tuple(limits)
    own: set[str] = set()
    if budget_key is not None:
        own = {lim.period for lim in limits if lim.scope == f"key:{budget_key}"}
    out: list[Charge] = []
    for lim in limits:
        scope = lim.scope
        if scope == "key:*":
            if budget_key is None or lim.period in own:
                continue
            scope = f"key:{budget_key}"
        out.append(Charge(scope, lim.period, bucket_for(lim.period, now), lim.limit))
    return tuple(out)


@runtime_checkable
class BudgetBackend(Protocol):
    """Where reservations and committed spend live. See the module docstring for the contract."""

    async def reserve(
        self, charges: Sequence[Charge], amount: Decimal, *, ttl: float, request_id: str = ""
    ) -> Reservation:
        """Reserve ``amount`` on every charge atomically, or raise ``BudgetExceeded``."""
        ...

    async def settle(self, reservation: Reservation, amount: Decimal) -> Decimal:
        """Commit ``amount`` and drop the reservation; returns the overspend (0 if none).

        A backend with ``settles_with_ledger = True`` also takes ``*, ledger: LedgerRow | None
        = None`` and writes that row in the settlement's transaction (see the module docstring).
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation without spending."""
        ...

    async def usage(self, charges: Sequence[Charge]) -> list[ScopeUsage]:
        """The state of each charge's bucket."""
        ...

    async def reconcile(self) -> int:
        """Release expired leases; returns how many were released."""
        ...

    async def aclose(self) -> None:
        ...


@attrs.frozen
class LedgerRow:
    """One attempt, as the usage ledger keeps it."""

    request_id: str
    attempt: int
    provider: str
    model: str
    outcome: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal | None = None
    error_type: str | None = None
    latency_s: float = 0.0
    scopes: tuple[str, ...] = ()
    at: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    usage_source: str = "reported"


#: One attempt's ledger row, not built yet: the fields of :class:`LedgerRow` in its order
#: (``request_id, attempt, provider, model, outcome, input_tokens, output_tokens,
#: cached_tokens, reasoning_tokens, cost, error_type, latency_s, scopes, at, usage_source``),
#: ``at`` a ``time.time()``. The manager builds the rows of a request at its end
#: (:func:`pending_row`), or hands them as they are to a backend that builds them when they
#: are read (``record_pending``, the in-memory backend's): most attempts' rows are never
#: read, and building one costs more than the rest of its record. Every value is atomic
#: (str, int, float, Decimal, None, a tuple of str), so the garbage collector stops tracking
#: a kept row at its first pass: ten thousand kept rows cost it nothing (rows holding the
#: model card and the Usage stayed tracked, and made every collection of the young
#: generation traverse about ten times the objects it otherwise would).
PendingRow = tuple[str, int, str, str, str, int, int, int, int, "Decimal | None", "str | None",
                   float, tuple[str, ...], float, str]


def pending_row(row: PendingRow) -> LedgerRow:
    """The :class:`LedgerRow` a :data:`PendingRow` stands for."""
    return LedgerRow(*row[:13], datetime.fromtimestamp(row[13], UTC),
                     row[14])


@runtime_checkable
class LedgerBackend(Protocol):
    """A backend that also keeps the usage ledger (one row per attempt). Rows are appended
    by ``record`` and, with ``settles_with_ledger = True``, by ``settle(..., ledger=row)``."""

    async def record(self, rows: Sequence[LedgerRow]) -> None:
        ...

    async def rows(self, since: datetime | None = None, until: datetime | None = None
                   ) -> list[LedgerRow]:
        ...


@runtime_checkable
class LedgerSummaries(Protocol):
    """A ledger backend that summarizes in its own store (see the module docstring)."""

    async def summarize(self, by: str, since: datetime | None = None,
                        until: datetime | None = None) -> list[dict[str, Any]]:
        """What ``ledger.summarize(await self.rows(since, until), by)`` returns."""
        ...


@runtime_checkable
class LedgerPruning(Protocol):
    """A ledger backend that can delete old rows (retention; see the module docstring)."""

    async def prune(self, before: datetime) -> int:
        """Delete the ledger rows with ``at < before``; returns how many were deleted. Budgets
        (committed spend) are untouched."""
        ...


class SettlesWithLedger(Protocol):
    """The ``settle`` of a backend with ``settles_with_ledger = True`` (module docstring)."""

    async def settle(self, reservation: Reservation, amount: Decimal, *,
                     ledger: LedgerRow | None = None) -> Decimal:
        """Commit ``amount``, drop the reservation and, if this settle commits, write ``ledger``
        in the same transaction; returns the overspend (0 if none)."""
        ...


def settles_with_ledger(backend: object) -> bool:
    """Whether ``backend`` takes ``settle(..., ledger=row)``: its class, or a base class with
    no ``settle`` or ``record`` overridden below it, declares ``settles_with_ledger = True``.
    (A subclass of a built-in backend that overrides ``settle`` with the two-argument form
    keeps working: it is never passed ``ledger``.)"""
    mro = type(backend).__mro__
    for i, klass in enumerate(mro):
        if "settles_with_ledger" in vars(klass):
            if vars(klass)["settles_with_ledger"] is not True:
                return False
            return not any("settle" in vars(k) or "record" in vars(k) for k in mro[:i])
    return False


def records_pending(backend: object) -> Callable[[Sequence[PendingRow]], None] | None:
    """``backend.record_pending`` when the backend takes a request's rows unbuilt (see
    :data:`PendingRow`): its class, or a base class with no ``record``, ``rows`` or ``settle``
    overridden below it, defines ``record_pending``, and it never suspends (``nonblocking``).
    A subclass that overrides ``record`` (to watch what is recorded, say) gets its rows built
    and passed to ``record``, as before."""
    if getattr(backend, "nonblocking", False) is not True:
        return None
    mro = type(backend).__mro__
    for i, klass in enumerate(mro):
        if "record_pending" in vars(klass):
            if any("record" in vars(k) or "rows" in vars(k) or "settle" in vars(k)
                   for k in mro[:i]):
                return None
            return getattr(backend, "record_pending", None)
    return None


@attrs.frozen
class StoreDeadline:
    """When a budget store call must be over: ``at`` on :func:`time.monotonic`'s clock (worker
    threads read it), ``seconds`` after the call was made. ``by_caller``: the caller's deadline
    set it (the request's, or the cleanup bound after it), not the backend's own timeout."""

    at: float
    seconds: float
    by_caller: bool

    def left(self) -> float:
        """Seconds left until ``at``, >= 0."""
        return max(0.0, self.at - time.monotonic())

    def work(self) -> float:
        """How long the database work may take from now: :meth:`left`, at least
        :data:`STORE_MIN_S`."""
        return max(self.at - time.monotonic(), STORE_MIN_S)

    def queue(self) -> float:
        """How long to wait for this process's own resources from now: :meth:`left`, at least
        :data:`QUEUE_MIN_S`."""
        return max(self.at - time.monotonic(), QUEUE_MIN_S)

    def spent(self) -> bool:
        """Whether the caller's deadline set the limit and has (about) passed."""
        return self.by_caller and self.at - time.monotonic() < 0.05

    def why(self) -> str:
        """What set the deadline, for messages."""
        return "the request's deadline" if self.by_caller else "the backend's own timeout"


def store_deadline(cap: float) -> StoreDeadline:
    """The deadline of a budget store call made now: the caller's (the earlier of
    ``anyio.current_effective_deadline()``, the request's deadline while it runs, and the
    :func:`cleanup_bound`), at most ``cap`` seconds away (the backend's own timeout). It may
    already have passed: a backend still gives the call :meth:`StoreDeadline.work` and
    :meth:`StoreDeadline.queue`. Call it before entering a cancel shield of your own: a shield
    hides the deadlines outside it."""
    seconds, by_caller = cap, False
    deadline = min(anyio.current_effective_deadline(), _cleanup_until.get())
    if deadline != math.inf:
        caller = deadline - anyio.current_time()
        if caller < cap:
            seconds, by_caller = max(caller, 0.0), True
    return StoreDeadline(time.monotonic() + seconds, seconds, by_caller)


class _Lease(Protocol):
    @property
    def id(self) -> str: ...


L = TypeVar("L", bound=_Lease)


async def reserve_shielded(
        make: Callable[[], Awaitable[L]], undo: Callable[[L], Awaitable[None]], *,
        timeout: type[Exception] = BudgetStoreTimeout,
        undo_errors: type[Exception] = BudgetStoreError, what: str = "reservation",
        left: str = "it stays held until it expires and reconcile releases it") -> L:
    """Run ``make`` shielded from cancellation; if the caller was cancelled meanwhile, ``undo``
    the lease it made (also shielded, within :data:`CLEANUP_GRACE`) and re-raise, so a
    cancelled reserve holds nothing rather than a lease until it expires (unless the store is
    too slow to undo it in time: then ``undo`` raises ``undo_errors``, and the lease ``left``
    is logged as ``what``). A ``make`` stopped by the caller's deadline (a ``timeout`` error
    with ``by_deadline`` set) gives way to the caller's cancellation when there is one.

    For a budget backend the defaults fit (``BudgetStoreTimeout``, ``BudgetStoreError``); a
    rate-limit store passes its own error types and words.

    The shield hides the caller's deadline from ``make``: take the store's deadline
    (:func:`store_deadline`) before calling this, and bound ``make`` with it."""
    await anyio.lowlevel.checkpoint_if_cancelled()  # already past the deadline: hold nothing
    lease: L | None = None
    timed_out: Exception | None = None
    with anyio.CancelScope(shield=True):
        try:
            lease = await make()
        except timeout as exc:
            if not getattr(exc, "by_deadline", False):
                raise
            timed_out = exc  # the caller's deadline passed: its cancellation comes first
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        if lease is None:
            raise
        now = anyio.current_time()
        with anyio.CancelScope(shield=True, deadline=now + CLEANUP_TIMEOUT), \
                cleanup_bound(now + CLEANUP_GRACE):
            try:
                await undo(lease)
            except undo_errors as exc:
                log.warning("%s %s of a cancelled request not released (%s): %s", what,
                            lease.id, exc, left)
        raise
    if lease is None:
        assert timed_out is not None
        raise timed_out
    return lease


@attrs.frozen
class BudgetBackendType:
    """A kind of budget backend a plugin offers, by ``name`` (``[budget] backend``)."""

    name: str
    factory: Any  # Callable[[options], BudgetBackend]
    options_type: type | None = None
    description: str = ""


def options_dict(options: Any) -> Mapping[str, Any]:
    return attrs.asdict(options) if attrs.has(type(options)) else dict(options or {})
