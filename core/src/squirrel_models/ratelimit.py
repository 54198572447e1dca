"""Rate limits: requests per minute, tokens per minute and requests in flight, held like
budgets (reserve / settle / release with leases) in a rate-limit store.

A :class:`RateLimit` caps one *scope* (``global``, ``provider:<name>``,
``model:<provider>/<model>``, ``key:<key>``, ``key:*`` for every key separately) with any of
``rpm``, ``tpm`` and ``max_concurrent``. For each attempt the core computes the
:class:`RateCharge` objects that apply (:func:`rate_charges_for`: one per limit kind and
scope) and asks the store to admit the attempt against all of them at once: one request, its
worst-case tokens (the same estimate the budget reserves), one slot in flight.

Window semantics: a **sliding window** of :data:`WINDOW` seconds (the exact sliding log).
An admission at time ``t`` counts until ``t + window``; a request is admitted only if the
requests (or tokens) admitted in the last ``window`` seconds, plus its own, stay within the
limit. Why not the others: a fixed window lets twice the limit through across a window edge
(the last second of one minute and the first of the next), which a provider counting
sliding windows answers with 429s; a token bucket (or GCRA) of the same size lets a full
bucket plus a window's refill through in one window, again up to twice the limit. Traffic a
sliding log admits stays within the limit in *every* interval of ``window`` seconds, so it is
accepted by a provider counting fixed windows, sliding windows or a token bucket of that
size alike, and the time until there is room again is exact (when the oldest admissions
leave the window), which is what selection reports ("room again in 12 s").

Store contract (checked by :class:`squirrel_models.testing.conformance.RateLimitStoreConformance`):

- ``reserve(charges, tokens, *, ttl, request_id="")`` is atomic: either every charge admits
  the attempt (an ``rpm`` charge counts 1 request, a ``tpm`` charge ``tokens``, a
  ``concurrent`` charge 1 slot) or none does and
  :class:`~squirrel_models.errors.RateLimitExceeded` names the first charge without room,
  with ``retry_in``: the seconds until that room comes back (None for a concurrency slot,
  or when the attempt needs more than the limit itself). At every moment, for every
  ``rpm``/``tpm`` charge, what was admitted within any ``window`` seconds stays within
  ``limit`` (only a settle reporting more tokens than were reserved can pass it, and it is
  returned as the excess); for every ``concurrent`` charge, the open leases stay within it.
- ``settle(lease, tokens)``: the attempt reached the upstream. Its request keeps counting in
  the window, its token count becomes ``tokens`` (the real usage: less than reserved gives the
  difference back at once; more is counted in full and returned as the excess), its
  concurrency slot is freed. ``release(lease)``: the attempt never reached the upstream (or
  must not count): its request, its tokens and its slot all come back. Both are idempotent,
  and neither undoes the other.
- A lease expires at ``expires_at`` (``ttl`` seconds after ``reserve``): its concurrency slot
  comes back (``reconcile`` returns how many leases expired), so a killed process does not
  hold slots for ever. Its request and tokens keep counting until they leave the window (the
  upstream may have served them). A settle after expiry still sets the token count.
- ``usage(charges)`` reports each charge's state (:class:`RateUsage`); ``reconcile()`` expires
  leases; ``aclose()`` releases the store's resources.
- A store whose calls never suspend (no ``await``, like the built-in ``memory`` store) may
  declare the class attribute ``nonblocking = True``: the manager then skips the cancel
  shield around settle and release.
- A store shared over the network raises :class:`~squirrel_models.errors.RateLimitStoreError`
  when it fails closed, and ends every call by the caller's deadline.

The built-in store is ``memory`` (:mod:`squirrel_models.builtins.memory_ratelimit`): exact,
one process. Rate-limit stores for many processes come from plugins through the
``register_ratelimit_stores`` hook (``squirrel-models-redis``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .errors import ConfigError, shown
from .fieldchecks import check_scope
from .trusted import builder

__all__ = [
    "KINDS",
    "WINDOW",
    "RateCharge",
    "RateLease",
    "RateLimit",
    "RateLimitConfig",
    "RateLimitStore",
    "RateLimitStoreType",
    "RateUsage",
    "UpstreamLimits",
    "rate_charges_for",
]

#: The window of ``rpm`` and ``tpm`` limits, in seconds: a minute, as providers count.
WINDOW = 60.0
#: The kinds of limit a charge can be.
KINDS: tuple[str, ...] = ("rpm", "tpm", "concurrent")
#: The largest value of any rate limit (a sanity bound: more is a typo).
MAX_RATE = 10**12

Kind = Literal["rpm", "tpm", "concurrent"]


@attrs.frozen(slots=True)
class RateCharge:
    """One limit applied to one attempt: at most ``limit`` of ``kind`` on ``scope``.

    ``kind``: ``rpm`` (requests admitted per ``window`` seconds), ``tpm`` (tokens per
    ``window`` seconds) or ``concurrent`` (leases open at once; ``window`` unused). A store
    keeps one count per ``(scope, kind)``: two charges with the same scope and kind share it.
    """

    scope: str
    kind: Kind
    limit: int
    window: float = WINDOW

    def amount(self, tokens: int) -> int:
        """What an attempt with ``tokens`` worst-case tokens takes of this charge."""
        return tokens if self.kind == "tpm" else 1


@attrs.frozen(slots=True)
class RateLease:
    """Room held for one attempt until it is settled or released (a lease).

    ``at``: when it was admitted and ``expires_at``: when its concurrency slot comes back by
    itself, both on the store's own clock (a store's clock need not be the wall clock).
    ``tokens``: the tokens it reserved on its ``tpm`` charges.
    """

    id: str
    charges: tuple[RateCharge, ...]
    tokens: int
    at: float
    expires_at: float
    request_id: str = ""


@attrs.frozen(slots=True)
class RateUsage:
    """The state of one charge's count now.

    ``used``: requests or tokens admitted within the window (``rpm``/``tpm``), or leases open
    (``concurrent``); ``reserved``: of these, what open leases still hold unsettled (a
    ``tpm`` count's worst cases not yet settled; for ``concurrent``, equal to ``used``).
    ``retry_in``: seconds until there is room for one more unit (0 when there is room now;
    None when only the end of a request in flight can make some).
    """

    scope: str
    kind: str
    limit: int
    used: int
    reserved: int = 0
    retry_in: float | None = 0.0

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def utilization(self) -> float:
        return self.used / self.limit if self.limit else 1.0


def _check_rate(instance: Any, attribute: Any, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATE:
        raise ConfigError(f"must be a whole number in 0..{MAX_RATE:,}, got {shown(value)}",
                          field=attribute.name)


@attrs.frozen
class RateLimit:
    """``[[rate_limits.limits]]``: on ``scope``, at most ``rpm`` requests and ``tpm`` tokens
    per minute (a sliding window) and ``max_concurrent`` requests in flight. Each is optional
    (None: no limit of that kind). 0 refuses every request of a caller's key (``key:``); on
    any other scope it is a ConfigError: no model there could ever be used, while selection
    would still rank them (a model or provider is switched off with ``enabled = false``)."""

    scope: str = attrs.field(validator=check_scope)
    rpm: int | None = attrs.field(default=None, kw_only=True, validator=_check_rate)
    tpm: int | None = attrs.field(default=None, kw_only=True, validator=_check_rate)
    max_concurrent: int | None = attrs.field(default=None, kw_only=True, validator=_check_rate)

    def __attrs_post_init__(self) -> None:
        if self.rpm is None and self.tpm is None and self.max_concurrent is None:
            raise ConfigError(f"limit on {self.scope} sets none of rpm, tpm and max_concurrent",
                              field="rpm")
        if not self.scope.startswith("key:"):
            for name in ("rpm", "tpm", "max_concurrent"):
                if getattr(self, name) == 0:
                    # Often meant as "no limit"; as "none at all" it would leave every model
                    # of the scope ranked in selection yet refused on every attempt.
                    raise ConfigError(
                        f"0 on {self.scope} would refuse every request there: leave {name} "
                        "unset for no limit; to stop using a model or provider, set enabled = "
                        "false on it (0 is for a caller's key: key:<key>)", field=name)

    def charges(self, scope: str, window: float = WINDOW) -> list[RateCharge]:
        """This limit's charges, on ``scope`` (``key:*`` made ``key:<the caller's key>``)."""
        out = []
        if self.rpm is not None:
            out.append(RateCharge(scope, "rpm", self.rpm, window))
        if self.tpm is not None:
            out.append(RateCharge(scope, "tpm", self.tpm, window))
        if self.max_concurrent is not None:
            out.append(RateCharge(scope, "concurrent", self.max_concurrent, window))
        return out


def _seconds(instance: Any, attribute: Any, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 <= value < float("inf")):
        raise ConfigError(f"must be a finite number of seconds >= 0, got {shown(value)}",
                          field=attribute.name)


def _positive_seconds(instance: Any, attribute: Any, value: float | None) -> None:
    _seconds(instance, attribute, value)
    if value is not None and value <= 0:
        raise ConfigError(f"must be a finite number of seconds > 0, got {shown(value)}",
                          field=attribute.name)


#: How long a model out of credit (402, ``insufficient_quota``) is left out by default.
QUOTA_COOLDOWN = 3600.0


@attrs.frozen
class RateLimitConfig:
    """``[rate_limits]``: the store, its options, the limits, and how upstream signals count.

    ``max_wait``: when every candidate is at a limit, how long a request may wait for room
    (never past its deadline; 0: it fails at once with the refusal). ``upstream``: honour the
    providers' rate-limit headers (``x-ratelimit-*``, IETF ``RateLimit``, ``Retry-After``).
    ``quota_cooldown``: how long a model that answered "out of credit" (402,
    ``insufficient_quota``) is left out of every ranking. ``lease_ttl``: how long a
    concurrency slot held by a process that died comes back after (unset: the budget's lease).
    """

    store: str = "memory"
    options: Mapping[str, Any] = attrs.field(factory=dict)
    limits: tuple[RateLimit, ...] = ()
    max_wait: float = attrs.field(default=0.0, validator=_seconds)
    upstream: bool = True
    quota_cooldown: float = attrs.field(default=QUOTA_COOLDOWN, validator=_seconds)
    lease_ttl: float | None = attrs.field(default=None, validator=_positive_seconds)


def rate_charges_for(limits: Iterable[RateLimit], *, provider: str, model_id: str,
                     key: str | None, window: float = WINDOW) -> tuple[RateCharge, ...]:
    """The charges that apply to an attempt on ``model_id`` (served by ``provider``) for the
    caller's ``key``.

    As with budgets, a limit on the caller's own key (``key:vip``) replaces the ``key:*``
    limit of the same kind for that key; two limits of one kind on one scope make one charge
    with the tighter limit, so nothing is counted twice.
    """
    limits = tuple(limits)
    own: set[str] = set()
    if key is not None:
        for lim in limits:
            if lim.scope == f"key:{key}":
                own.update(c.kind for c in lim.charges(lim.scope))
    out: dict[tuple[str, str], RateCharge] = {}
    for lim in limits:
        kind, _, name = lim.scope.partition(":")
        wildcard = False
        if lim.scope == "global":
            scope = "global"
        elif (kind == "provider" and name == provider) or (kind == "model" and name == model_id):
            scope = lim.scope
        elif kind == "key" and key is not None and name in (key, "*"):
            scope, wildcard = f"key:{key}", name == "*"
        else:
            continue
        for charge in lim.charges(scope, window):
            if wildcard and charge.kind in own:
                continue
            k = (charge.scope, charge.kind)
            if k not in out or charge.limit < out[k].limit:
                out[k] = charge
    return tuple(out.values())


@attrs.frozen(slots=True)
class UpstreamLimits:
    """What a provider announced about its limits in one answer's headers (parsed by
    :func:`squirrel_models.upstream.parse_rate_limits`, the one place that reads them).

    ``*_remaining``: what is left until ``*_reset`` seconds from when the answer was read;
    ``*_limit``: the limit itself, when said; ``retry_after``: seconds before any retry (a
    429's or 503's ``Retry-After``). Requests of the IETF ``RateLimit`` fields count as
    ``requests``.
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        # Built by a plugin (the core's parser skips this: see new_upstream_limits): what the
        # limiter stores and compares must be counts and seconds, as Usage checks itself.
        problem = limits_problem(self)
        if problem is not None:
            from .errors import MalformedResponse

            err = MalformedResponse(f"rate_limits.{problem}")
            err.sent = True  # read off an answer: the upstream may have billed it
            raise err


def limits_problem(limits: UpstreamLimits) -> str | None:
    """What is wrong with ``limits``' fields (counts: whole numbers >= 0; seconds: finite
    numbers >= 0; each may be None), None if nothing is."""
    for name in ("requests_limit", "requests_remaining", "tokens_limit", "tokens_remaining"):
        v = getattr(limits, name)
        if v is not None and not (type(v) is int and 0 <= v < 2**63):
            return f"{name} {shown(v)}, not a count"
    for name in ("requests_reset", "tokens_reset", "retry_after"):
        v = getattr(limits, name)
        if v is not None and not (type(v) in (int, float) and 0 <= v < float("inf")):
            return f"{name} {shown(v)}, not seconds >= 0"
    return None


#: :class:`UpstreamLimits` as ``upstream.parse_rate_limits`` builds them (see ``trusted.builder``):
#: from numbers it parsed and checked, so without the check a plugin's values get.
new_upstream_limits = builder(UpstreamLimits, checked=True)


@runtime_checkable
class RateLimitStore(Protocol):
    """Where rate-limit counts live. See the module docstring for the contract."""

    async def reserve(self, charges: Sequence[RateCharge], tokens: int, *, ttl: float,
                      request_id: str = "") -> RateLease:
        """Admit one attempt with ``tokens`` worst-case tokens on every charge atomically, or
        raise :class:`~squirrel_models.errors.RateLimitExceeded`."""
        ...

    async def settle(self, lease: RateLease, tokens: int) -> int:
        """The attempt reached the upstream and used ``tokens``: keep its request, set its
        token count, free its slot; returns the tokens above the reservation (0 if none)."""
        ...

    async def release(self, lease: RateLease) -> None:
        """The attempt never reached the upstream: give back its request, tokens and slot."""
        ...

    async def usage(self, charges: Sequence[RateCharge]) -> list[RateUsage]:
        """The state of each charge's count."""
        ...

    async def reconcile(self) -> int:
        """Expire the leases past ``expires_at`` (their slots come back); returns how many."""
        ...

    async def aclose(self) -> None:
        ...


@attrs.frozen
class RateLimitStoreType:
    """A kind of rate-limit store a plugin offers, by ``name`` (``[rate_limits] store``).

    ``factory(options)`` returns a :class:`RateLimitStore`; ``options`` is the
    ``[rate_limits.options]`` table structured into ``options_type`` (a dict when None).
    """

    name: str
    factory: Any  # Callable[[options], RateLimitStore]
    options_type: type | None = None
    description: str = ""


def never_fits(charge: RateCharge, tokens: int) -> bool:
    """Whether an attempt with ``tokens`` can never be admitted on ``charge``: it needs more
    than the limit itself (a limit of 0, of any kind, admits nothing)."""
    return charge.amount(tokens) > charge.limit
