"""Rate-limit admission in the request flow (used by the manager; see docs/rate-limits.md).

One :class:`RateLimiter` per manager. For each attempt it:

1. checks what the provider announced for the model (its rate-limit headers: requests and
   tokens remaining until a reset; a ``Retry-After``; "out of credit"), kept here per model;
2. reserves the attempt in the rate-limit store against every configured limit that applies
   (:func:`~squirrel_models.ratelimit.rate_charges_for`): 1 request, the attempt's worst-case
   tokens (the same estimate the budget reserves), 1 slot in flight;
3. after the attempt, settles the lease to the tokens really used (or releases it when the
   attempt never reached the upstream).

A refusal is :class:`~squirrel_models.errors.RateLimitExceeded`, a refusal before any call:
the fallback chain moves to the next candidate at once. An attempt that needs more than a
limit itself (worst-case tokens above a ``tpm`` limit) is
:class:`~squirrel_models.errors.RateLimitTooSmall` instead, before the store is asked: no
wait can admit it, so it is never worth retrying, but another candidate may fit. A model or provider at a limit is also
remembered until its room comes back, and :meth:`RateLimiter.blocked` hands those to the
selector, which leaves them out of rankings with the reason ("rpm limit reached on model:p/m
(60/60), room again in 12 s"). A refusal no other model can avoid (a caller's key, the
global scope) waits for room when ``[rate_limits] max_wait`` allows, never past the deadline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .budget import CLEANUP_GRACE, cleanup_bound
from .config import lease_needed
from .errors import ModelError, RateLimitExceeded, RateLimitStoreError, RateLimitTooSmall
from .ratelimit import (
    RateCharge,
    RateLease,
    RateLimitConfig,
    RateLimitStore,
    UpstreamLimits,
    never_fits,
    rate_charges_for,
)

if TYPE_CHECKING:
    from .decision import Decision
    from .types import ModelCard

__all__ = ["RateLimiter"]

log = logging.getLogger("squirrel_models.ratelimit")
_EMPTY: Mapping[str, str] = {}


def _plan_of(charges: tuple[RateCharge, ...]) -> tuple[bool, float]:
    """Whether ``charges`` hold a ``tpm`` charge, and the most tokens an attempt may ask of
    them before one of them can never admit it (:func:`never_fits`: more than a ``tpm``
    limit, or any limit of 0)."""
    fits = min([c.limit if c.kind == "tpm" else math.inf if c.limit >= 1 else -1.0
                for c in charges], default=math.inf)
    return any(c.kind == "tpm" for c in charges), fits


@attrs.define
class _Announced:
    """What a provider last announced for one model: ``left`` of each kind until ``until``
    (the limiter's clock), less what was admitted since (``taken``)."""

    requests_left: int | None = None
    requests_limit: int | None = None
    requests_until: float = 0.0
    requests_taken: int = 0
    tokens_left: int | None = None
    tokens_limit: int | None = None
    tokens_until: float = 0.0
    tokens_taken: int = 0


@attrs.define
class _Block:
    """A scope (``model:<id>`` or ``provider:<name>``) known to have no room until ``until``,
    and the refusal that said so."""

    until: float
    error: RateLimitExceeded

    def refusal(self, now: float, model_id: str | None = None) -> RateLimitExceeded:
        return self.error.with_model(model_id, max(self.until - now, 0.0))


@attrs.define
class RateLimiter:
    """Admission against configured and announced rate limits (see the module docstring)."""

    config: RateLimitConfig
    store: RateLimitStore | None
    ttl: float
    clock: Callable[[], float] = time.monotonic
    #: Told of each refusal raised to the caller (the manager counts them in
    #: ``squirrel.ratelimit.refusals``); a refusal that waited and found room is not one.
    on_refusal: Callable[[RateLimitExceeded | RateLimitTooSmall], None] | None = None
    #: The longest an upstream's ``Retry-After`` leaves a model out (``[circuit_breaker]
    #: max_cooldown``, which bounds the breakers' hold the same way).
    max_retry_after: float = 60.0
    _charges: dict[tuple[str, str | None], tuple[RateCharge, ...]] = attrs.field(factory=dict)
    #: Per entry of ``_charges``: whether a ``tpm`` charge is among them, and the most tokens
    #: an attempt may ask without a charge it can never fit (see :meth:`_check_fits`).
    _plans: dict[tuple[str, str | None], tuple[bool, float]] = attrs.field(factory=dict)
    _announced: dict[str, _Announced] = attrs.field(factory=dict)
    _blocks: dict[str, _Block] = attrs.field(factory=dict)
    _inline: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._inline = getattr(self.store, "nonblocking", False) is True

    def reconfigure(self, config: RateLimitConfig, ttl: float,
                    max_retry_after: float | None = None) -> None:
        """Apply changed limits (``reload``); the store and its counts stay."""
        self.config, self.ttl = config, ttl
        if max_retry_after is not None:
            self.max_retry_after = max_retry_after
        self._charges.clear()
        self._plans.clear()
        # What the old limits refused says nothing about the new ones.
        for scope, block in list(self._blocks.items()):
            if block.error.source == "configured":
                del self._blocks[scope]

    @property
    def nonblocking(self) -> bool:
        """Whether the store's calls never suspend (``nonblocking`` stores need no shield)."""
        return self._inline

    @property
    def idle(self) -> bool:
        """Nothing to check: no limit configured, nothing announced, nothing blocked."""
        return not (self.config.limits or self._announced or self._blocks)

    # --- selection -----------------------------------------------------------------------

    def blocked(self) -> Mapping[str, str]:
        """Scopes (``model:<id>``, ``provider:<name>``) with no room now, with the reason:
        what the selector leaves out of rankings. Expired blocks are dropped here."""
        if not self._blocks:
            return _EMPTY
        now = self.clock()
        out: dict[str, str] = {}
        for scope, block in list(self._blocks.items()):
            if block.until <= now:
                del self._blocks[scope]
            else:
                out[scope] = block.refusal(now).reason()
        return out

    def _block(self, scope: str, until: float, error: RateLimitExceeded) -> None:
        old = self._blocks.get(scope)
        if old is None or old.until < until:
            self._blocks[scope] = _Block(until, error)

    def earliest(self, decision: Decision) -> tuple[float, RateLimitExceeded] | None:
        """When the first model excluded from ``decision`` for a rate limit has room again,
        and that refusal; None when no model was excluded for one."""
        best: tuple[float, RateLimitExceeded] | None = None
        now = self.clock()
        for mid in decision.excluded:
            provider = mid.split("/", 1)[0]
            for scope in (f"model:{mid}", f"provider:{provider}"):
                block = self._blocks.get(scope)
                if block is None or block.until <= now:
                    continue
                wait = block.until - now
                if best is None or wait < best[0]:
                    best = (wait, block.refusal(now, mid))
        return best

    async def wait_for_room(self, decision: Decision, rank: Callable[[], Decision],
                            end: float) -> Decision:
        """``decision`` had no candidate left: if rate limits excluded some, wait for the
        first to have room (``max_wait`` at most, never past ``end``, anyio's clock) and rank
        again; raise that :class:`RateLimitExceeded` when waiting is not allowed or too long.
        Returns ``decision`` unchanged when no rate limit excluded anything."""
        waited = 0.0
        while not decision.cards:
            first = self.earliest(decision)
            if first is None:
                return decision
            wait, err = first
            if (wait > self.config.max_wait - waited
                    or anyio.current_time() + wait >= end):
                self.refused_now(err)
                raise err
            await anyio.sleep(wait)
            waited += wait
            decision = rank()
        return decision

    def headroom(self, card: ModelCard) -> float:
        """The share of the model's tightest limit still free now, in [0, 1] (1 when nothing
        limits it): what upstreams announced, and the configured limits when the store can
        say without waiting (``peek``, as the memory store can). Read for load spread."""
        room = 1.0
        now = self.clock()
        if self._blocks and (f"model:{card.id}" in self._blocks
                             or f"provider:{card.provider}" in self._blocks):
            for scope in (f"model:{card.id}", f"provider:{card.provider}"):
                block = self._blocks.get(scope)
                if block is not None and block.until > now:
                    return 0.0
        st = self._announced.get(card.id)
        if st is not None:
            if st.requests_left is not None and now < st.requests_until:
                total = max(st.requests_limit or 0, st.requests_left, 1)
                room = min(room, max(st.requests_left - st.requests_taken, 0) / total)
            if st.tokens_left is not None and now < st.tokens_until:
                total = max(st.tokens_limit or 0, st.tokens_left, 1)
                room = min(room, max(st.tokens_left - st.tokens_taken, 0) / total)
        peek = getattr(self.store, "peek", None)
        if peek is not None and self.config.limits:
            for c, used in zip(charges := self.charges(card, None), peek(charges), strict=True):
                if c.limit > 0:
                    room = min(room, max(c.limit - used, 0) / c.limit)
        return room

    # --- per attempt ---------------------------------------------------------------------

    def charges(self, card: ModelCard, key: str | None) -> tuple[RateCharge, ...]:
        ck = (card.id, key)
        got = self._charges.get(ck)
        if got is None:
            if len(self._charges) > 4096:
                self._charges.clear()
                self._plans.clear()
            got = self._charges[ck] = rate_charges_for(
                self.config.limits, provider=card.provider, model_id=card.id, key=key)
            self._plans[ck] = _plan_of(got)
        return got

    def _plan(self, card: ModelCard, key: str | None) -> tuple[bool, float]:
        """``_plans``' entry for ``card`` and ``key`` (made with their charges)."""
        plan = self._plans.get((card.id, key))
        if plan is None:
            plan = self._plans[(card.id, key)] = _plan_of(self.charges(card, key))
        return plan

    def counts_tokens(self, card: ModelCard, key: str | None, bound: int) -> bool:
        """Whether admitting an attempt on ``card`` needs its prompt counted: a configured
        ``tpm`` limit applies to it, or the upstream announced a token budget for the model
        that ``bound`` (a cheap upper bound of the attempt's tokens) may not fit. Otherwise
        :meth:`admit` may be given ``bound``: requests and slots do not depend on the count,
        and an announced token budget is only charged more than the exact count would."""
        if self.config.limits and self._plan(card, key)[0]:
            return True
        st = self._announced.get(card.id)
        return st is not None and st.tokens_left is not None and \
            st.tokens_left - st.tokens_taken < bound

    def _check_announced(self, card: ModelCard, tokens: int, now: float) -> _Announced | None:
        st = self._announced.get(card.id)
        if st is None:
            return None
        live = False
        if st.requests_left is not None:
            if now >= st.requests_until:
                st.requests_left = None
            else:
                live = True
                used = st.requests_taken
                if st.requests_left - used < 1:
                    self._refuse_upstream(card, "rpm", st.requests_limit, st.requests_left,
                                          used, 1, st.requests_until - now, now)
        if st.tokens_left is not None:
            if now >= st.tokens_until:
                st.tokens_left = None
            else:
                live = True
                used = st.tokens_taken
                if st.tokens_left - used < tokens:
                    self._refuse_upstream(card, "tpm", st.tokens_limit, st.tokens_left, used,
                                          tokens, st.tokens_until - now, now)
        if not live:
            del self._announced[card.id]
            return None
        return st

    def _refuse_upstream(self, card: ModelCard, kind: str, limit: int | None, left: int,
                         taken: int, need: int, wait: float, now: float) -> None:
        if limit is not None and need > limit:
            # the upstream's own limit is below the attempt: no wait helps, another model may
            raise RateLimitTooSmall(scope=f"model:{card.id}", kind=kind, limit=limit,
                                    requested=need, model_id=card.id, source="upstream")
        lim = limit if limit is not None and limit >= left else left
        why = ""
        if need > lim:  # what is left, the limit itself unsaid: not "the limit is below"
            why = (f"{kind} limit reached on model:{card.id} (announced upstream): "
                   f"{max(left - taken, 0):,} {'tokens' if kind == 'tpm' else 'requests'} "
                   f"left until its reset, {need:,} needed")
        err = RateLimitExceeded(scope=f"model:{card.id}", kind=kind, limit=lim,
                                used=lim - left + taken, requested=need, retry_in=wait,
                                model_id=card.id, source="upstream", why=why)
        self._block(err.scope, now + wait, err)
        raise err

    async def admit(self, card: ModelCard, tokens: int, key: str | None, request_id: str,
                    end: float = math.inf, timeout: float = 0.0) -> RateLease | None:
        """Admit one attempt on ``card`` with ``tokens`` worst-case tokens for the caller's
        ``key``, or raise :class:`RateLimitExceeded`. Returns the store's lease (None when no
        configured limit applies). ``end``: the request's deadline (anyio's clock), the bound
        of any wait ``max_wait`` allows; ``timeout``: the request's own, which its lease
        outlives (:meth:`lease_ttl`)."""
        # One coroutine for the usual case (every attempt under a configured limit runs it).
        try:
            announced = self._check_now(card, tokens) if self._blocks or self._announced \
                else None
            lease = None
            if self.config.limits and self.store is not None:
                charges = self._charges.get((card.id, key)) or self.charges(card, key)
                if charges:
                    if tokens > self._plan(card, key)[1]:
                        self._check_fits(card, charges, tokens)
                    ttl = self.lease_ttl(timeout)
                    try:
                        lease = await self.store.reserve(charges, tokens, ttl=ttl,
                                                         request_id=request_id)
                    except RateLimitExceeded as exc:
                        lease = await self._refused(card, charges, tokens, request_id, end, ttl,
                                                    exc)
        except (RateLimitExceeded, RateLimitTooSmall) as exc:
            self.refused_now(exc)
            raise
        if announced is not None:
            announced.requests_taken += 1
            announced.tokens_taken += tokens
        return lease

    def refused_now(self, exc: RateLimitExceeded | RateLimitTooSmall) -> None:
        """Count a refusal (the metric ``squirrel.ratelimit.refusals``)."""
        if self.on_refusal is not None:
            self.on_refusal(exc)

    def announces_tokens(self, card: ModelCard) -> bool:
        """Whether the upstream announced a token budget for ``card`` (that may still apply)."""
        st = self._announced.get(card.id)
        return st is not None and st.tokens_left is not None

    def admit_unconfigured(self, card: ModelCard, tokens: int) -> None:
        """:meth:`admit` when no limit is configured: only what is blocked and what upstreams
        announced apply, so there is no store call and no lease (synchronous)."""
        try:
            announced = self._check_now(card, tokens)
        except (RateLimitExceeded, RateLimitTooSmall) as exc:
            self.refused_now(exc)
            raise
        if announced is not None:
            announced.requests_taken += 1
            announced.tokens_taken += tokens

    def _check_now(self, card: ModelCard, tokens: int) -> _Announced | None:
        """Refuse an attempt on a blocked model or beyond what its upstream announced."""
        if self._blocks:
            now = self.clock()
            block = self._blocks.get(f"model:{card.id}") or self._blocks.get(
                f"provider:{card.provider}")
            if block is not None and block.until > now:
                raise block.refusal(now, card.id)
        if self._announced:
            return self._check_announced(card, tokens, self.clock())
        return None

    def lease_ttl(self, timeout: float) -> float:
        """The lease of a request with ``timeout``: ``ttl``, or longer for a request given a
        longer timeout than the configuration's (``complete(..., timeout=...)``): a lease
        that expired while its request still ran would give its concurrency slot (and its
        tokens' reservation) to others. A configured ``lease_ttl`` shorter than that refuses
        the timeout first (``ModelManager._timeout``), as the budget's ``reservation_ttl``
        does."""
        return max(self.ttl, lease_needed(timeout))

    @staticmethod
    def _check_fits(card: ModelCard, charges: tuple[RateCharge, ...], tokens: int) -> None:
        """Refuse at once, without asking the store, an attempt that needs more than a
        limit itself: a 429 would have its caller retry for ever."""
        for c in charges:
            if never_fits(c, tokens):
                raise RateLimitTooSmall(scope=c.scope, kind=c.kind, limit=c.limit,
                                        requested=c.amount(tokens), model_id=card.id)

    async def _refused(self, card: ModelCard, charges: tuple[RateCharge, ...], tokens: int,
                       request_id: str, end: float, ttl: float, exc: RateLimitExceeded
                       ) -> RateLease:
        """The store refused: remember a model-level refusal for selection and raise it (the
        next candidate may have room), or wait for room when ``max_wait`` allows and no other
        model would help (the caller's key, the global scope)."""
        assert self.store is not None
        waited = 0.0
        pause = 0.05
        while True:
            if exc.never:  # a store's own verdict (its limits are the charges checked)
                raise RateLimitTooSmall.from_refusal(exc, card.id) from None
            err = exc.with_model(card.id)
            model_level = exc.scope.startswith(("model:", "provider:"))
            if model_level and exc.retry_in is not None:
                self._block(exc.scope, self.clock() + exc.retry_in, exc)
            if model_level:
                raise err from None  # another candidate may have room: go there now
            wait = exc.retry_in if exc.retry_in is not None else pause
            pause = min(pause * 2, 1.0)
            if wait > self.config.max_wait - waited or anyio.current_time() + wait >= end:
                raise err from None
            await anyio.sleep(wait)
            waited += wait
            try:
                return await self.store.reserve(charges, tokens, ttl=ttl,
                                                request_id=request_id)
            except RateLimitExceeded as again:
                exc = again

    async def settle(self, lease: RateLease, tokens: int) -> None:
        """The attempt reached the upstream and used ``tokens``."""
        store = self.store
        if store is None:
            return
        try:
            if self._inline:  # never suspends: no cancel shield needed
                await store.settle(lease, tokens)
            else:
                await self._shielded(lambda: store.settle(lease, tokens))
        except RateLimitStoreError as exc:
            log.warning("rate-limit lease %s not settled (%s): its slot comes back when it "
                        "expires", lease.id, exc)

    async def release(self, lease: RateLease) -> None:
        """The attempt never reached the upstream."""
        store = self.store
        if store is None:
            return
        try:
            if self._inline:
                await store.release(lease)
            else:
                await self._shielded(lambda: store.release(lease))
        except RateLimitStoreError as exc:
            log.warning("rate-limit lease %s not released (%s): its slot comes back when it "
                        "expires", lease.id, exc)

    @staticmethod
    async def _shielded(fn: Callable[[], Any]) -> None:
        """``fn`` (a store's settle or release) shielded from the caller's cancellation, its
        store calls bounded as the budget's cleanup is (:func:`~.budget.cleanup_bound`): by
        the caller's deadline plus :data:`~.budget.CLEANUP_GRACE`, taken before the shield
        hides it. With the shield alone a hung store held a request that had its answer up
        to :data:`~.budget.CLEANUP_TIMEOUT` (5 s) past its deadline."""
        from .attempt import CLEANUP_TIMEOUT

        until = anyio.current_effective_deadline() + CLEANUP_GRACE  # inf: no deadline
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + CLEANUP_TIMEOUT), \
                cleanup_bound(until):
            await fn()

    async def failed(self, lease: RateLease | None, card: ModelCard, exc: BaseException,
                     tokens: int | None) -> None:
        """An attempt on ``card`` failed with ``exc`` after it was admitted.

        Settled when it reached the upstream: to ``tokens`` when known, to 0 when the upstream
        answered with an error status (nothing was generated), else (a timeout, a broken
        connection, a cancellation: the upstream may have done the work) to its reservation.
        Then what the failure says about the model's limits is noted (:meth:`observe_error`).
        """
        if lease is not None:
            if tokens is None:
                answered = isinstance(exc, ModelError) and exc.status_code is not None
                tokens = 0 if answered else lease.tokens
            await self.settle(lease, tokens)
        if isinstance(exc, ModelError):
            self.observe_error(card, exc)

    # --- what the upstream said ----------------------------------------------------------

    def observe(self, card: ModelCard, limits: UpstreamLimits | None) -> None:
        """Note what a provider announced in an answer's headers for ``card``: the requests
        and tokens left until each reset (admissions beyond them are refused until then), and
        a ``Retry-After`` (the model is left out until then)."""
        if limits is None or not self.config.upstream:
            return
        now = self.clock()
        st = self._announced.get(card.id)
        if limits.requests_remaining is not None or limits.tokens_remaining is not None:
            if st is None:
                st = self._announced[card.id] = _Announced()
            if limits.requests_remaining is not None:
                st.requests_left = limits.requests_remaining
                st.requests_limit = limits.requests_limit
                st.requests_until = now + (limits.requests_reset
                                           if limits.requests_reset is not None else 60.0)
                st.requests_taken = 0
            if limits.tokens_remaining is not None:
                st.tokens_left = limits.tokens_remaining
                st.tokens_limit = limits.tokens_limit
                st.tokens_until = now + (limits.tokens_reset
                                         if limits.tokens_reset is not None else 60.0)
                st.tokens_taken = 0
        if limits.retry_after is not None and limits.retry_after > 0:
            # As the circuit breakers do: a "come back tomorrow" costs one request a
            # max_cooldown, not a day without the model.
            wait = min(limits.retry_after, self.max_retry_after)
            err = RateLimitExceeded(scope=f"model:{card.id}", kind="rpm",
                                    limit=limits.requests_limit or 0,
                                    used=limits.requests_limit or 0, requested=1,
                                    retry_in=wait, source="upstream",
                                    why="the upstream asked to wait (Retry-After)")
            self._block(err.scope, now + wait, err)

    def observe_error(self, card: ModelCard, exc: ModelError) -> None:
        """Note what a failed attempt's error says: its rate-limit headers, and "out of
        credit" (402, ``insufficient_quota``), which leaves the model out for
        ``quota_cooldown`` seconds."""
        limits = getattr(exc, "rate_limits", None)
        if isinstance(limits, UpstreamLimits):
            self.observe(card, limits)
        if getattr(exc, "out_of_credit", False) and self.config.quota_cooldown > 0:
            now = self.clock()
            code = f"HTTP {exc.status_code}" if exc.status_code else "the upstream said so"
            scope = f"model:{card.id}"
            self._block(scope, now + self.config.quota_cooldown, RateLimitExceeded(
                scope=scope, kind="quota", limit=0, used=0, requested=1,
                retry_in=self.config.quota_cooldown, source="upstream",
                why=f"out of credit upstream ({code}: insufficient quota)"))
            log.warning("model %s is out of credit upstream: left out for %g s "
                        "([rate_limits] quota_cooldown)", card.id, self.config.quota_cooldown)

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()
