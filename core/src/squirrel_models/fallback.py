"""The fallback chain and per-model circuit breakers.

:class:`FallbackChain` runs attempts until one succeeds, asking its strategies, in order,
what to do after each failure (retry after a delay, another model, or give up). It never
makes more than ``max_attempts`` upstream calls and never outlives the request's deadline.

A :class:`CircuitBreakers` keeps one breaker per model: after ``failure_threshold``
consecutive health failures a model's breaker opens for a cooldown that doubles with each
consecutive opening (up to ``max_cooldown``). An open breaker makes no upstream call; after
its cooldown one trial call is let through (half-open).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Generic, NoReturn, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from .errors import (
    AllCoolingDown,
    AuthenticationError,
    BudgetExceeded,
    ConfigError,
    CostCeilingExceeded,
    FallbackExhausted,
    MalformedResponse,
    MidStreamError,
    ModelError,
    PluginError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    RateLimitExceeded,
    RateLimitTooSmall,
    ServerError,
    SquirrelError,
    UnpricedModel,
    shown,
)
from .responses import new_attempt_record
from .types import AttemptRecord, ModelCard

__all__ = [
    "BreakerConfig",
    "CircuitBreakers",
    "FallbackChain",
    "FallbackContext",
    "FallbackStep",
    "FallbackStrategy",
    "FallbackStrategyType",
    "check_graph",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
#: Event-loop timers (trio's especially) and time.monotonic differ by a hair: a call made
#: right when a Retry-After ends must not be refused for it.
_SLACK = 0.005

#: Errors after which the chain consults its strategies; anything else propagates at once.
FALLBACK_ERRORS: tuple[type[BaseException], ...] = (
    ModelError, BudgetExceeded, CostCeilingExceeded, UnpricedModel, RateLimitExceeded,
    RateLimitTooSmall,
)
#: Refusals before any upstream call: they do not count toward ``max_attempts``.
REFUSALS: tuple[type[BaseException], ...] = (BudgetExceeded, CostCeilingExceeded, UnpricedModel,
                                             RateLimitExceeded, RateLimitTooSmall)
#: Errors that say something about a model's health and count toward its breaker.
HEALTH_ERRORS: tuple[type[BaseException], ...] = (
    ServerError, ProviderTimeout, ProviderConnectionError, MalformedResponse, RateLimited,
    AuthenticationError, MidStreamError,
)


# --- circuit breakers -------------------------------------------------------------------


@attrs.frozen
class BreakerConfig:
    """``failure_threshold`` consecutive failures open a breaker for ``base_cooldown`` s,
    doubled per consecutive opening up to ``max_cooldown`` s. ``enabled = false``: breakers
    never open (an upstream's ``Retry-After`` still holds a model until then)."""

    failure_threshold: int = 3
    base_cooldown: float = 1.0
    max_cooldown: float = 60.0
    enabled: bool = True
    #: A breaker store (``register_breaker_stores``) that shares cooldowns among instances;
    #: None: each process keeps its own (see :mod:`squirrel_models.sharedbreakers`).
    shared: str | None = None
    shared_options: dict[str, Any] = attrs.field(factory=dict)
    sync_interval: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError("must be >= 1", field="failure_threshold")
        if not 0 < self.sync_interval < math.inf:
            raise ConfigError("must be a finite number > 0", field="sync_interval")
        if self.shared is None and self.shared_options:
            # Without it each instance kept its own breakers, while the table seemed to
            # share them.
            raise ConfigError("has no effect unless shared names a breaker store (shared = "
                              "\"redis\" shares the cooldowns among instances)",
                              field="shared_options")
        if not (0 < self.base_cooldown <= self.max_cooldown) or math.isinf(self.max_cooldown):
            raise ConfigError("need 0 < base_cooldown <= max_cooldown < inf",
                              field="base_cooldown")


@attrs.define
class _Breaker:
    failures: int = 0
    openings: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False


@attrs.define
class CircuitBreakers:
    """One breaker per model id. ``clock`` is monotonic seconds (injectable for tests)."""

    config: BreakerConfig = attrs.field(factory=BreakerConfig)
    clock: Callable[[], float] = time.monotonic
    _b: dict[str, _Breaker] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: Called with (model id, open until) when a cooldown opens or grows (shared breakers).
    on_open: Callable[[str, float], None] | None = None

    def is_open(self, model_id: str) -> bool:
        """True while calls to ``model_id`` are refused (cooling down, or a trial is out)."""
        b = self._b.get(model_id)
        if b is None:
            return False
        return self.clock() < b.open_until or b.trial_in_flight

    def tracked(self) -> Collection[str]:
        """The models with breaker state (a live view); every other model's breaker is closed."""
        return self._b.keys()

    def acquire(self, model_id: str) -> bool:
        """May a call go to ``model_id`` now? Claims the half-open trial when one is due."""
        if model_id not in self._b:  # no state: closed (a dict read needs no lock)
            return True
        with self._lock:
            b = self._b.get(model_id)
            if b is None:
                return True
            if self.clock() + _SLACK < b.open_until or b.trial_in_flight:
                return False
            if b.openings:
                b.trial_in_flight = True
            return True

    def retry_in(self, model_id: str) -> float:
        b = self._b.get(model_id)
        return 0.0 if b is None else max(0.0, b.open_until - self.clock())

    def success(self, model_id: str) -> None:
        if model_id not in self._b:  # nothing to forget
            return
        with self._lock:
            self._b.pop(model_id, None)

    def failure(self, model_id: str, error: BaseException | None = None) -> None:
        """Count a health failure; open (or re-open, longer) the breaker when due.

        A ``retry_after`` on the error (a 429's ``Retry-After``) holds every call to the
        model until then, breaker or not.
        """
        retry_after = getattr(error, "retry_after", None) or 0.0
        if not self.config.enabled and not retry_after > 0:
            return
        with self._lock:
            b = self._b.setdefault(model_id, _Breaker())
            b.failures += 1
            trial, b.trial_in_flight = b.trial_in_flight, False
            now = self.clock()
            if not self.config.enabled:
                pass  # switched off: only the upstream's Retry-After holds the model
            elif trial or b.failures >= self.config.failure_threshold:
                cooldown = min(self.config.base_cooldown * 2 ** b.openings,
                               self.config.max_cooldown)
                b.openings += 1
                b.open_until = max(b.open_until, now + cooldown)
            if retry_after > 0:
                b.open_until = max(b.open_until,
                                   now + min(float(retry_after), self.config.max_cooldown))
            opened = b.open_until > now
        if opened and self.on_open is not None:
            self.on_open(model_id, b.open_until)

    def hold(self, model_id: str, until: float, *, share: bool = True) -> None:
        """Refuse calls to ``model_id`` until ``until`` (this clock), counting no failure (a
        cool-down decided elsewhere: an out-of-credit answer, say). ``share``: tell the other
        instances too (``on_open``); False for a hold that came from them."""
        with self._lock:
            b = self._b.setdefault(model_id, _Breaker())
            grew = until > b.open_until
            b.open_until = max(b.open_until, until)
        if grew and share and self.on_open is not None:
            self.on_open(model_id, until)

    def neutral(self, model_id: str) -> None:
        """The attempt ended without a health verdict (cancelled, refused): free the trial."""
        with self._lock:
            b = self._b.get(model_id)
            if b is not None:
                b.trial_in_flight = False


# --- strategies -------------------------------------------------------------------------


@attrs.frozen
class FallbackStep:
    """What to do next: call ``model`` after ``delay`` seconds. ``reason`` is for humans."""

    model: ModelCard
    delay: float = 0.0
    reason: str = ""


@attrs.define
class FallbackContext:
    """What a strategy may consult: the failed model, the ranked candidates, history, time."""

    current: ModelCard
    candidates: tuple[ModelCard, ...]
    attempts: list[AttemptRecord]
    tries: dict[str, int]
    deadline: float
    graph: Mapping[str, tuple[str, ...]]
    is_available: Callable[[str], bool]
    worst_case: Callable[[ModelCard], Decimal | None]
    clock: Callable[[], float] = time.monotonic
    retry_in: Callable[[str], float] = lambda model_id: 0.0
    #: A model id outside ``candidates`` -> its card when this request may still go there
    #: (``[fallback.graph]`` edges: see :func:`FallbackChain.run`), else None.
    reachable: Callable[[str], ModelCard | None] = lambda model_id: None
    #: The random source of the chain (a backoff's jitter): seeded from the manager's seed, so
    #: the same seed and the same failures give the same delays (see :class:`FallbackChain`).
    rng: random.Random = attrs.field(factory=random.Random)

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def untried(self) -> list[ModelCard]:
        """Candidates not yet called whose breaker lets a call through, in ranking order."""
        return [c for c in self.candidates
                if c.id not in self.tries and self.is_available(c.id)]


@runtime_checkable
class FallbackStrategy(Protocol):
    """Decides what follows a failure it can handle."""

    @property
    def name(self) -> str:
        ...

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        ...

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        """The next step, or None to let the next strategy decide."""
        ...


@attrs.frozen
class FallbackStrategyType:
    """A named strategy factory: ``factory(options)`` returns a :class:`FallbackStrategy`.

    ``options_type`` is an attrs class the ``[fallback.options.<name>]`` table is structured
    into (errors name the field); None passes the table through as a dict.
    """

    name: str
    factory: Callable[[Any], FallbackStrategy]
    description: str = ""
    options_type: type | None = None


def check_graph(graph: Mapping[str, Sequence[str]], *, field: str = "fallback.graph") -> None:
    """Raise :class:`ConfigError` naming the cycle if the fallback graph has one."""
    WHITE, GREY, BLACK = 0, 1, 2
    color: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        color[node] = GREY
        path.append(node)
        for nxt in graph.get(node, ()):
            c = color.get(nxt, WHITE)
            if c == GREY:
                cycle = [*path[path.index(nxt):], nxt]
                raise ConfigError(f"fallback cycle {' -> '.join(cycle)}", field=field)
            if c == WHITE:
                visit(nxt)
        path.pop()
        color[node] = BLACK

    for start in sorted(graph):
        if color.get(start, WHITE) == WHITE:
            visit(start)


class AttemptRunner(Protocol[T_co]):
    """What :meth:`FallbackChain.run_with` runs attempts through: ``attempt(card, number)``
    makes one; ``records`` receives every record; ``on_attempt`` is told of each;
    ``worst_case`` and ``reachable`` are what strategies consult (see
    :class:`FallbackContext`)."""

    records: list[AttemptRecord]

    def attempt(self, card: ModelCard, number: int) -> Awaitable[T_co]: ...

    def on_attempt(self, rec: AttemptRecord, card: ModelCard) -> None: ...

    def worst_case(self, card: ModelCard) -> Decimal | None: ...

    def reachable(self, model_id: str) -> ModelCard | None: ...


class _Callables(Generic[T]):
    """:meth:`FallbackChain.run`'s callables as an :class:`AttemptRunner`."""

    __slots__ = ("_attempt", "_on_attempt", "reachable", "records", "worst_case")

    def __init__(self, attempt: Callable[[ModelCard, int], Awaitable[T]],
                 worst_case: Callable[[ModelCard], Decimal | None],
                 records: list[AttemptRecord],
                 on_attempt: Callable[[AttemptRecord, ModelCard], None] | None,
                 reachable: Callable[[str], ModelCard | None]) -> None:
        self._attempt, self.worst_case, self.records = attempt, worst_case, records
        self._on_attempt, self.reachable = on_attempt, reachable

    def attempt(self, card: ModelCard, number: int) -> Awaitable[T]:
        return self._attempt(card, number)

    def on_attempt(self, rec: AttemptRecord, card: ModelCard) -> None:
        if self._on_attempt is not None:
            self._on_attempt(rec, card)


# --- the chain --------------------------------------------------------------------------


@attrs.frozen
class _Outcome(Generic[T]):
    value: T


@attrs.define
class FallbackChain:
    """Runs attempts with ``strategies`` (in order) and at most ``max_attempts`` upstream calls.

    ``breakers`` may be shared between chains; ``graph`` maps a model id to the ids to try
    after it (checked for cycles). ``rng`` is the random source the strategies draw from
    (``FallbackContext.rng``: the retry backoff's jitter); the manager seeds it from its seed
    (``[scoring] spread_seed``, else a random one), so delays are reproducible with a seed and
    differ between processes and between requests without one.
    """

    strategies: Sequence[FallbackStrategy]
    max_attempts: int = 3
    breakers: CircuitBreakers = attrs.field(factory=CircuitBreakers)
    graph: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = attrs.field(factory=random.Random)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError(f"must be in 1..100, got {self.max_attempts}", field="max_attempts")
        check_graph(self.graph)

    def _cooling_down(self, candidates: Sequence[ModelCard]) -> AllCoolingDown:
        waits = [self.breakers.retry_in(c.id) for c in candidates]
        wait = min(waits) if waits else 0.0
        at = datetime.now(UTC) + timedelta(seconds=wait)
        return AllCoolingDown(retry_at=at, retry_in=wait, models=[c.id for c in candidates])

    async def run(
        self,
        candidates: Sequence[ModelCard],
        attempt: Callable[[ModelCard, int], Awaitable[T]],
        *,
        deadline: float,
        worst_case: Callable[[ModelCard], Decimal | None] = lambda card: None,
        records: list[AttemptRecord] | None = None,
        on_attempt: Callable[[AttemptRecord, ModelCard], None] | None = None,
        defer_success: bool = False,
        reachable: Callable[[str], ModelCard | None] = lambda model_id: None,
    ) -> T:
        """Call ``attempt(card, number)`` until one succeeds; returns its result.

        ``reachable`` gives the card of a model outside ``candidates`` that a strategy may
        still send the request to (the manager: a ``[fallback.graph]`` target that meets
        every requirement of the request but its ``models`` pin), else None.

        ``defer_success``: a returned attempt is not yet a success for the model's breaker (a
        stream that produced its first chunk may still stall); the caller reports its verdict
        (``breakers.success``, ``failure`` or ``neutral``) when it knows.

        ``records`` (if given) receives one :class:`AttemptRecord` per attempt or skip.
        Raises the first error itself when only one attempt was made, else
        :class:`FallbackExhausted` with every attempt; :class:`AllCoolingDown` when no
        candidate's breaker lets a call through.
        """
        runner = _Callables(attempt, worst_case, records if records is not None else [],
                            on_attempt, reachable)
        return await self.run_with(candidates, runner, deadline=deadline,
                                   defer_success=defer_success)

    async def run_with(self, candidates: Sequence[ModelCard], runner: AttemptRunner[T], *,
                       deadline: float, defer_success: bool = False) -> T:
        """:meth:`run`, with the attempts, the records and the callbacks held by one object
        (the manager's request: no closure per request)."""
        records = runner.records
        breakers = self.breakers
        # The first model usually answers: the candidates are read one by one up to the
        # first whose breaker lets a call through (a lazy sequence sorts nothing more), and
        # copied and indexed only when an attempt fails.
        current: ModelCard | None = None
        for card in candidates:
            if breakers.acquire(card.id):
                current = card
                break
            self._note(runner, AttemptRecord(len(records) + 1, card.id, card.provider,
                                             "skipped", note="circuit breaker open"), card)
        if current is None:
            raise self._cooling_down(tuple(candidates))
        ranked: tuple[ModelCard, ...] | None = None
        by_id: Mapping[str, ModelCard] = _NO_IDS  # built with ``ranked``
        # Attempts per model, counted when one fails (only a failure's next step reads them):
        # a request answered at once builds neither dict.
        tries: dict[str, int] | None = None

        upstream = 0
        while True:
            upstream += 1
            t0 = self.clock()
            try:
                result = await runner.attempt(current, upstream)
            except FALLBACK_ERRORS as exc:
                latency = self.clock() - t0
                if tries is None:
                    tries = {}
                tries[current.id] = tries.get(current.id, 0) + 1
                refused = isinstance(exc, REFUSALS)
                if refused:
                    upstream -= 1
                if isinstance(exc, HEALTH_ERRORS):
                    breakers.failure(current.id, exc)
                else:
                    breakers.neutral(current.id)
                self._note(runner, AttemptRecord(len(records) + 1, current.id, current.provider,
                                                 "refused" if refused else "error",
                                                 error=exc, usage=getattr(exc, "usage", None),
                                                 latency_s=latency), current)
                if refused:
                    # Refused before any call upstream (by an in-memory budget, say), so
                    # nothing in it suspended: a checkpoint, or a burst of refusals runs as one
                    # block that holds the event loop (the requests the budget admitted wait
                    # past their deadline) and ignores its callers' cancellation.
                    await anyio.lowlevel.checkpoint()
                if upstream >= self.max_attempts:
                    self._give_up(records, exc, f"max_attempts={self.max_attempts} reached")
                if ranked is None:
                    ranked = tuple(candidates)
                    by_id = {c.id: c for c in ranked}
                ctx = FallbackContext(current, ranked, records, tries, deadline, self.graph,
                                      self._available, runner.worst_case, self.clock,
                                      breakers.retry_in, runner.reachable, self.rng)
                step = await self._next_step(exc, ctx)
                if step is None:
                    self._give_up(records, exc, "no fallback applies")
                if step.delay > 0:
                    if step.delay >= ctx.remaining():
                        self._give_up(records, exc, "next try would pass the deadline")
                    await anyio.sleep(step.delay)
                nxt = by_id.get(step.model.id, step.model)
                if not breakers.acquire(nxt.id):
                    self._note(runner, AttemptRecord(len(records) + 1, nxt.id, nxt.provider,
                                                     "skipped", note="circuit breaker open"), nxt)
                    alternative = _first_untried(ranked, tries, nxt, breakers)
                    if alternative is None:
                        self._give_up(records, exc, "every other candidate is cooling "
                                            "down")
                    nxt = alternative
                current = nxt
            except BaseException:
                breakers.neutral(current.id)
                raise
            else:
                if not defer_success:
                    breakers.success(current.id)
                rec = new_attempt_record(len(records) + 1, current.id, current.provider, "ok",
                                         None, getattr(result, "usage", None),
                                         getattr(result, "cost", None), self.clock() - t0)
                records.append(rec)  # what _note does, one call fewer on every answer
                runner.on_attempt(rec, current)
                return result

    @staticmethod
    def _note(runner: AttemptRunner[Any], rec: AttemptRecord, card: ModelCard) -> None:
        runner.records.append(rec)
        runner.on_attempt(rec, card)

    def _available(self, model_id: str) -> bool:
        return not self.breakers.is_open(model_id)

    async def _next_step(self, exc: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        for strategy in self.strategies:
            # A strategy is a plugin's code: what it raises, or a step that is no step, is a
            # PluginError naming it (never a bare ZeroDivisionError out of complete()).
            try:
                step = (await strategy.try_fallback(exc, ctx)
                        if strategy.can_handle(exc, ctx) else None)
            except SquirrelError:
                raise
            except Exception as broken:
                raise PluginError(f"raised {type(broken).__name__} deciding what follows "
                                  f"{type(exc).__name__} on {ctx.current.id}: {broken}",
                                  plugin=f"fallback strategy {_name_of(strategy)}") from broken
            if step is None:
                continue
            if not isinstance(step, FallbackStep) or not isinstance(step.model, ModelCard):
                raise PluginError(f"try_fallback returned {shown(step)}, not a FallbackStep "
                                  f"holding a ModelCard, or None",
                                  plugin=f"fallback strategy {_name_of(strategy)}")
            return step
        return None

    @staticmethod
    def _give_up(records: list[AttemptRecord], exc: BaseException, reason: str) -> NoReturn:
        """Raise ``exc`` itself, keeping its own ``__cause__`` (the transport error that
        explains it; never ``raise exc from exc``), or a FallbackExhausted caused by it."""
        failed = [r for r in records if r.outcome in ("error", "refused")]
        if len(failed) <= 1 or all(r.outcome == "refused" for r in failed):
            raise exc  # one error, or refusals before any call: the last one says it best
        raise FallbackExhausted(records, reason=reason) from exc


_NO_IDS: Mapping[str, ModelCard] = MappingProxyType({})


def _name_of(strategy: object) -> str:
    try:
        return str(strategy.name)  # type: ignore[attr-defined]
    except Exception:  # a plugin's object: even its name may fail
        return type(strategy).__name__


def _first_untried(ranked: Sequence[ModelCard], tries: Mapping[str, int], skipped: ModelCard,
                   breakers: CircuitBreakers) -> ModelCard | None:
    """The best-ranked candidate not tried yet, but ``skipped``, whose breaker lets a call
    through, or None. Only that one is acquired: acquiring claims a half-open breaker's trial,
    and a trial claimed for a model never called was never freed (refused for good)."""
    for c in ranked:
        if c.id not in tries and c.id != skipped.id and breakers.acquire(c.id):
            return c
    return None
