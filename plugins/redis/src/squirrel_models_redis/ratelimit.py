"""The ``redis`` rate-limit store: rpm, tpm and concurrency counts shared by many instances.

Every admission, settlement and release is one ``EVALSHA`` of a script in :mod:`.rlscripts`
(one round trip, atomic on the server): the exact sliding log of the core's ``memory`` store,
dated by the Redis server's clock (``TIME``), so instances on hosts with skewed clocks share
one window. Every call is bounded by the caller's deadline and the plugin's own timeouts.

When Redis cannot be reached, ``on_unavailable`` decides: ``fail_closed`` raises
:class:`RateLimitRedisUnavailable` (a :class:`~squirrel_models.errors.RateLimitStoreError`);
``fail_open`` logs a warning and, until Redis answers again, admits against the same limits
counted by this process alone (a core ``MemoryRateLimitStore``; N instances may then admit up
to N times a limit). Leases held in Redis and settled or released meanwhile are settled or
released by the first call that reaches Redis again (before, they were dropped: their slots
stayed held until their ttl, ten minutes by default, so a ``max_concurrent`` scope refused
every request long after a blip, with the store chosen to keep serving through one).

A hung server (SIGSTOPped, swapping) takes commands it does not answer and runs them when it
resumes, after their callers left. A lease whose reserve (or release) got no answer is
therefore *undone*, as the budget's reservations are: its id is kept, and this store's next
script call first runs :data:`~.rlscripts.RL_UNDO` for it, which gives the lease back if its
reserve ran and leaves a tombstone that makes a reserve running later admit nothing. Before,
such a lease held its concurrency slot and its admissions until its ttl (ten minutes by
default): every request of a ``max_concurrent`` scope was refused long after Redis was back.
A settle that did not get through is likewise run again by the next call (a server killed and
restarted from its append-only file still holds the lease).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import attrs
from squirrel_models.budget import StoreDeadline, reserve_shielded
from squirrel_models.builtins.memory_ratelimit import MemoryRateLimitStore
from squirrel_models.errors import ConfigError, RateLimitExceeded, RateLimitStoreError
from squirrel_models.ratelimit import RateCharge, RateLease, RateUsage
from squirrel_models.secrets import Secret

from . import rlscripts as R
from .budget import MAX_UNDONE, TOMBSTONE_S
from .client import RedisClient
from .client import text as _text
from .errors import (
    RateLimitRedisError,
    RateLimitRedisTimeout,
    RateLimitRedisUnavailable,
    RedisStoreError,
    RedisUnavailable,
    as_ratelimit_error,
)
from .fallback import Outage
from .options import RedisOptions, check_unused

__all__ = ["RedisRateLimitStore"]

log = logging.getLogger("squirrel_models_redis")
T = TypeVar("T")
EXPIRE_BATCH = 1000
_SEP = "\x1f"


def _field(c: RateCharge) -> str:
    return f"{c.scope}{_SEP}{c.kind}"


@attrs.define
class RedisRateLimitStore:
    """Rate-limit counts in Redis, shared by processes and hosts (see the module docstring).

    The URL is read from ``$<options.url_env>`` unless ``url`` is given. ``clock`` (seconds)
    dates admissions and leases when set; by default the Redis server's clock does.
    """

    options: RedisOptions = attrs.field(factory=RedisOptions)
    clock: Callable[[], float] | None = None
    url: Secret | None = attrs.field(default=None, kw_only=True)
    _client: RedisClient = attrs.field(init=False)
    _local: MemoryRateLimitStore | None = attrs.field(default=None, init=False)
    _local_ids: set[str] = attrs.field(factory=set, init=False)
    _outage: Outage = attrs.field(
        factory=lambda: Outage("the rate limits on its own traffic"), init=False)
    #: Leases given up on (id: charges, tombstone seconds), undone by the next script call.
    _undone: dict[str, tuple[tuple[RateCharge, ...], float]] = attrs.field(factory=dict,
                                                                           init=False)
    #: Settles that did not get through (id: charges, tokens), run by the next script call.
    _unsettled: dict[str, tuple[tuple[RateCharge, ...], int]] = attrs.field(factory=dict,
                                                                            init=False)

    def __attrs_post_init__(self) -> None:
        if self.options.slices:
            raise ConfigError("only a budget serves leased slices", field="rate_limits.options.slices")
        check_unused(self.options, "rate_limits.options", {
            "ledger_retention_days": "the rate limits keep no ledger (the budget's is pruned by "
                                     "budget.options.ledger_retention_days)"})
        self._client = RedisClient(self.options, self.url, "rate_limits.options")

    def _key(self, *parts: str) -> str:
        return self._client.key("rl", *parts)

    def _keys(self, charges: Sequence[RateCharge]) -> list[str]:
        keys = [self._key("sums"), self._key("leases"), self._key("open"), self._key("expired")]
        keys += [self._key("log", _field(c)) for c in charges if c.kind != "concurrent"]
        keys.append(self._key("undone"))  # last: the tombstones of leases given up on
        return keys

    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    @staticmethod
    def _args(charges: Sequence[RateCharge]) -> list[Any]:
        out: list[Any] = [len(charges)]
        for c in charges:
            out += [c.kind, _field(c), c.scope, c.limit, repr(float(c.window))]
        return out

    async def _eval(self, operation: str, script: Any, keys: Sequence[str], args: Sequence[Any],
                    deadline: StoreDeadline) -> Any:
        try:
            if self._unsettled:
                await self._resettle(operation, deadline)
            if self._undone:
                await self._undo(operation, deadline)
            return await self._client.eval(operation, script, keys, args, deadline)
        except RedisStoreError as exc:
            raise as_ratelimit_error(exc) from None

    def _give_up(self, lid: str, charges: Sequence[RateCharge], ttl: float = 0.0) -> None:
        """Undo lease ``lid`` at the next call: its reserve (or release) may still run on a
        server that took it without answering."""
        if len(self._undone) >= MAX_UNDONE:
            dropped = next(iter(self._undone))
            del self._undone[dropped]
            log.error("redis unreachable for long: %d rate-limit leases wait to be undone; "
                      "the oldest (%s) is left to expire", MAX_UNDONE, dropped)
        self._undone[lid] = (tuple(charges), max(float(ttl), TOMBSTONE_S))

    async def _resettle(self, operation: str, deadline: StoreDeadline) -> None:
        """Run again the settles that did not get through (a server killed and restarted
        from its append-only file still holds their leases, slots included, until their
        ttl); one that ran after all finds its lease gone and does nothing."""
        pending, self._unsettled = self._unsettled, {}
        try:
            for lid, (charges, tokens) in list(pending.items()):
                try:
                    await self._client.eval(operation, R.RL_SETTLE, self._keys(charges),
                                            [lid, tokens, self._now()], deadline)
                except RedisUnavailable:
                    raise
                except RedisStoreError as exc:
                    # It would fail again, and fail every call behind it (as an expiry's
                    # script error once did): dropped, its lease left to expire.
                    log.error("settle of rate-limit lease %s failed (%s): left to expire", lid,
                              exc)
                del pending[lid]
        finally:
            self._unsettled = {**pending, **self._unsettled}

    async def _undo(self, operation: str, deadline: StoreDeadline) -> None:
        """Run :data:`~.rlscripts.RL_UNDO` for the leases given up on, before ``operation``
        (its errors name that operation: it could not run); those it did not reach stay for
        the next call (running one twice is harmless)."""
        undone, self._undone = self._undone, {}
        ids = list(undone)
        try:
            for i in range(0, len(ids), EXPIRE_BATCH):
                batch = ids[i:i + EXPIRE_BATCH]
                fields = sorted({_field(c) for lid in batch for c in undone[lid][0]
                                 if c.kind != "concurrent"})
                keys = [*self._keys(())[:4], *(self._key("log", f) for f in fields),
                        self._key("undone")]
                args: list[Any] = [self._now(), len(fields), *fields]
                for lid in batch:
                    args += [lid, repr(undone[lid][1])]
                dropped = int(await self._client.eval(operation, R.RL_UNDO, keys, args, deadline))
                if dropped:
                    log.info("released %d rate-limit lease(s) whose callers had given up on a "
                             "hung redis", dropped)
                for lid in batch:
                    del undone[lid]
        finally:
            self._undone = {**undone, **self._undone}

    @property
    def local(self) -> MemoryRateLimitStore:
        if self._local is None:
            self._local = MemoryRateLimitStore()
        return self._local

    async def _shared(self, operation: str, remote: Callable[[], Awaitable[T]],
                      local: Callable[[], Awaitable[T]]) -> T:
        """``remote()``; with ``fail_open``, ``local()`` while Redis is unreachable."""
        if self.options.on_unavailable != "fail_open":
            return await remote()
        if self._outage.waiting:
            return await local()
        try:
            result = await remote()
        except RateLimitRedisUnavailable as exc:
            if isinstance(exc, RateLimitRedisTimeout) and exc.by_deadline:
                raise  # the caller's own time is up
            self._outage.went_down(operation, exc, self.options.unavailable_retry_s)
            return await local()
        if self._outage.answered():
            log.warning("redis answers again: shared rate limits apply")
        return result

    # --- the store contract ------------------------------------------------------------

    async def reserve(self, charges: Sequence[RateCharge], tokens: int, *, ttl: float,
                      request_id: str = "") -> RateLease:
        lid = uuid.uuid4().hex
        deadline = self._client.deadline()
        args = [lid, int(tokens), repr(float(ttl)), request_id, self._now(), EXPIRE_BATCH,
                *self._args(charges)]

        async def remote() -> RateLease:
            try:
                reply = await self._eval("reserve", R.RL_RESERVE, self._keys(charges), args,
                                         deadline)
            except RateLimitStoreError:
                self._give_up(lid, charges, ttl)  # the server may have taken it: it may run later
                raise
            if int(reply[0]) == 2:  # undone meanwhile (cannot happen in one call): say so
                raise RateLimitRedisError(f"redis: reserve failed: lease {lid} was undone",
                                          "reserve", "undone")
            if int(reply[0]) == 1:
                return RateLease(lid, tuple(charges), int(tokens), float(_text(reply[1])),
                                 float(_text(reply[2])), request_id)
            c = charges[int(reply[1]) - 1]
            retry = float(_text(reply[4]))
            raise RateLimitExceeded(scope=c.scope, kind=c.kind, limit=c.limit,
                                    used=int(reply[2]), requested=int(reply[3]),
                                    retry_in=None if retry < 0 else retry)

        async def local() -> RateLease:
            lease = await self.local.reserve(charges, tokens, ttl=ttl, request_id=request_id)
            self._local_ids.add(lease.id)
            return lease

        # a caller cancelled meanwhile gets its lease released, not one holding its slot
        # until it expires
        return await reserve_shielded(
            lambda: self._shared("reserve", remote, local), self.release,
            timeout=RateLimitRedisTimeout, undo_errors=RateLimitStoreError,
            what="rate-limit lease", left="its slot comes back when it expires")

    async def settle(self, lease: RateLease, tokens: int) -> int:
        if lease.id in self._local_ids:
            self._local_ids.discard(lease.id)
            return await self.local.settle(lease, tokens)
        deadline = self._client.deadline()

        def later() -> None:
            if len(self._unsettled) < MAX_UNDONE:  # else left to expire
                self._unsettled[lease.id] = (lease.charges, int(tokens))

        async def remote() -> int:
            try:
                with anyio.CancelScope(shield=True):
                    over = await self._eval("settle", R.RL_SETTLE, self._keys(lease.charges),
                                            [lease.id, int(tokens), self._now()], deadline)
            except RateLimitStoreError:
                later()
                raise
            return int(over)

        async def deferred() -> int:
            later()  # run by the first call that reaches Redis again
            return max(int(tokens) - lease.tokens, 0)

        return await self._shared("settle", remote, deferred)

    async def release(self, lease: RateLease) -> None:
        if lease.id in self._local_ids:
            self._local_ids.discard(lease.id)
            await self.local.release(lease)
            return
        await self._release_shared(lease)

    async def _release_shared(self, lease: RateLease) -> None:
        deadline = self._client.deadline()

        async def remote() -> None:
            try:
                with anyio.CancelScope(shield=True):
                    await self._eval("release", R.RL_RELEASE, self._keys(lease.charges),
                                     [lease.id, self._now()], deadline)
            except RateLimitStoreError:
                self._give_up(lease.id, lease.charges)  # given back by the next call
                raise

        async def deferred() -> None:
            self._give_up(lease.id, lease.charges)  # given back by the first call that gets through

        await self._shared("release", remote, deferred)

    async def usage(self, charges: Sequence[RateCharge]) -> list[RateUsage]:
        deadline = self._client.deadline()

        async def remote() -> list[RateUsage]:
            flat = await self._eval("usage", R.RL_USAGE, self._keys(charges),
                                    [self._now(), EXPIRE_BATCH, *self._args(charges)], deadline)
            out = []
            for i, c in enumerate(charges):
                used, reserved, retry = flat[3 * i:3 * i + 3]
                r = float(_text(retry))
                out.append(RateUsage(c.scope, c.kind, c.limit, int(used), int(reserved),
                                     None if r < 0 else r))
            return out

        async def local() -> list[RateUsage]:
            return await self.local.usage(charges)

        return await self._shared("usage", remote, local)

    async def reconcile(self) -> int:
        """Expire the leases past their expiry (their slots come back), and forget expired
        leases older than ``expired_retention_s``; returns how many expired."""
        async def remote() -> int:
            n_all = 0
            while True:
                n = int(await self._eval("reconcile", R.RL_EXPIRE, self._keys(()),
                                         [self._now(), EXPIRE_BATCH,
                                          self.options.expired_retention_s],
                                         self._client.deadline()))
                n_all += n
                if n < EXPIRE_BATCH:
                    return n_all

        async def local() -> int:
            return await self.local.reconcile()

        return await self._shared("reconcile", remote, local)

    async def aclose(self) -> None:
        """Try once more, within the store's own timeout, the settles and undos that did not
        reach Redis (a process shutting down makes no next call that would run them: their
        leases held the slots and tokens until they expired); log at WARNING what is left;
        then close the connection."""
        with anyio.CancelScope(shield=True):
            if self._unsettled or self._undone:
                deadline = self._client.deadline()
                error: RedisStoreError | None = None
                with anyio.move_on_after(deadline.seconds):  # bounds the calls together
                    try:
                        if self._unsettled:
                            await self._resettle("close", deadline)
                        if self._undone:
                            await self._undo("close", deadline)
                    except RedisStoreError as exc:
                        error = exc
                why = error or "out of time"
                if self._unsettled:
                    log.warning("redis unreachable at close (%s): %d rate-limit settle(s) not "
                                "written; their leases hold until they expire", why,
                                len(self._unsettled))
                if self._undone:  # a reserve refused before it ran holds nothing
                    log.info("redis unreachable at close (%s): %d rate-limit lease(s) given up "
                             "on not released (any that reached redis hold until they expire)",
                             why, len(self._undone))
            await self._client.aclose()
