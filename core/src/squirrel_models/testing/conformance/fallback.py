"""The conformance suite of fallback strategies: :class:`FallbackStrategyConformance`."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import attrs

from ... import errors as e
from ...cards import ModelCard, Price
from ...fallback import FallbackContext, FallbackStep, FallbackStrategy

__all__ = ["MAX_STEPS", "FallbackScene", "FallbackStrategyConformance", "sample_errors"]

#: The most attempts a chain may make (``max_attempts`` is at most 100): a strategy that still
#: proposes a step after this many failures in a row never stops by itself.
MAX_STEPS = 100


def _card(model: str, window: int, price: str | None) -> ModelCard:
    return ModelCard.for_provider("p", model, provider_type="t", context_window=window,
                                  price=None if price is None else Price(input=price, output=price))


A, B, C = _card("a", 8_192, "0.10"), _card("b", 32_768, "0.05"), _card("c", 128_000, "0.01")
#: A candidate whose circuit breaker is open.
COOLING = _card("cooling", 128_000, "0.001")
#: Not a candidate, but a ``[fallback.graph]`` edge the request may still follow (``reachable``).
REACHABLE = _card("edge", 200_000, "0.02")
#: Named by a graph edge but outside what the request may reach (``allowed_models``, its
#: requirements): ``reachable`` says None.
FORBIDDEN = _card("forbidden", 1_000_000, "0.0001")
_WORST = {A.id: Decimal("0.10"), B.id: Decimal("0.05"), C.id: Decimal("0.01"),
          COOLING.id: Decimal("0.001"), REACHABLE.id: Decimal("0.02")}


@attrs.frozen
class FallbackScene:
    """One situation after a failure: makes a fresh :class:`FallbackContext` each time (a
    strategy must not change one, but a wrong one may). ``roomy``: the deadline leaves time
    for any backoff, so the same inputs must give the same step."""

    label: str
    current: ModelCard
    tries: dict[str, int]
    seconds_left: float = 60.0
    graph: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    cooling: frozenset[str] = frozenset({COOLING.id})
    candidates: tuple[ModelCard, ...] = (A, B, C, COOLING)
    reachable: tuple[ModelCard, ...] = (REACHABLE,)

    @property
    def roomy(self) -> bool:
        return self.seconds_left >= 60

    def context(self, clock: Callable[[], float] = time.monotonic) -> FallbackContext:
        cooling, reachable = self.cooling, {c.id: c for c in self.reachable}
        return FallbackContext(
            self.current, self.candidates, [], dict(self.tries), clock() + self.seconds_left,
            dict(self.graph), lambda mid: mid not in cooling, lambda card: _WORST.get(card.id), clock,
            lambda mid: 30.0 if mid in cooling else 0.0, reachable.get)

    def permitted(self) -> set[str]:
        return {c.id for c in (*self.candidates, *self.reachable)}


def sample_errors() -> list[e.SquirrelError]:
    """An instance of every :class:`SquirrelError` type, in the variants strategies tell apart
    (a ``retry_after`` or not, a budget on a model or on everyone, a 404 or a 400...)."""
    now = datetime.now(UTC)
    budget: dict[str, Any] = {"period": "total", "limit": Decimal(1), "committed": Decimal("0.99"),
              "reserved": Decimal(0), "requested": Decimal("0.10")}
    return [
        e.SquirrelError("root"), e.ConfigError("bad", field="fallback.graph"), e.PluginError("broke", plugin="x"),
        e.InvalidRequest("bad", field="messages"), e.ModelNotFound("p/x"), e.CapabilityNotSupported("none"),
        e.ResourceExhausted("out"),
        e.BudgetExceeded(scope="global", **budget), e.BudgetExceeded(scope=f"model:{A.id}", model_id=A.id, **budget),
        e.BudgetExceeded(scope="provider:p", **budget), e.BudgetExceeded(scope="key:team", **budget),
        e.CostCeilingExceeded(worst_case=Decimal("0.10"), ceiling=Decimal("0.05"), model_id=A.id),
        e.UnpricedModel(A.id),
        e.RateLimitExceeded(scope=f"model:{A.id}", kind="rpm", limit=1, used=1, requested=1, retry_in=0.5),
        e.RateLimitExceeded(scope="key:team", kind="tpm", limit=10, used=10, requested=5, retry_in=None),
        e.RateLimitTooSmall(scope=f"model:{A.id}", kind="tpm", limit=10, requested=14, model_id=A.id),
        e.RateLimitTooSmall(scope="key:team", kind="tpm", limit=10, requested=14),
        e.AllCoolingDown(retry_at=now, retry_in=1.0, models=[A.id]), e.DeadlineExceeded(timeout=1.0),
        e.BudgetStoreError("down", operation="reserve"), e.BudgetStoreTimeout("slow", operation="settle"),
        e.RateLimitStoreError("down", operation="reserve"), e.FallbackExhausted([]),
        e.ModelError("failed", model_id=A.id), e.RateLimited(model_id=A.id),
        e.RateLimited(retry_after=0.01, model_id=A.id), e.RateLimited(retry_after=30.0, model_id=A.id),
        e.ProviderTimeout("slow"), e.ProviderConnectionError("reset"), e.ServerError("503", status_code=503),
        e.MalformedResponse("junk"), e.ContextWindowExceeded(needed=20_000, window=8_192),
        e.ContextWindowExceeded(), e.ContentFiltered("refused"), e.AuthenticationError("401", status_code=401),
        e.InvalidRequestError("400", status_code=400), e.InvalidRequestError("404", status_code=404),
        e.InvalidRequestError("no tools here", model_specific=True),
        e.MidStreamError("cut", partial_text="Hel"), e.MidStreamError("cut"),
    ]


def _what(error: BaseException) -> str:
    return f"{type(error).__name__}({error})"


def _snapshot(ctx: FallbackContext) -> tuple[Any, ...]:
    return (ctx.current, ctx.candidates, list(ctx.attempts), dict(ctx.tries), ctx.deadline, dict(ctx.graph))


class FallbackStrategyConformance:
    """Checks a fallback strategy (:class:`~squirrel_models.fallback.FallbackStrategy`):
    provide a ``strategy`` fixture returning one (what your factory makes of its options).

    The strategy meets every :class:`SquirrelError` type (:func:`sample_errors`) in the
    situations of :meth:`scenes`: a first failure, a second model failing after the first, a
    graph edge to a model outside the candidates (reachable) and one to a model the request may
    not reach, an open breaker, a deadline near or past, every candidate tried. Override
    :meth:`scenes` or :meth:`errors` to add the situations your strategy is for.
    """

    def errors(self) -> list[e.SquirrelError]:
        return sample_errors()

    def scenes(self) -> list[FallbackScene]:
        graph = {A.id: (FORBIDDEN.id, REACHABLE.id, B.id), B.id: (A.id, C.id), C.id: (COOLING.id, A.id)}
        return [
            FallbackScene("first failure", A, {A.id: 1}, graph=graph),
            FallbackScene("second model failed", B, {A.id: 1, B.id: 1}, graph=graph),
            FallbackScene("retried once", A, {A.id: 2}, graph=graph),
            FallbackScene("every candidate tried", C, {A.id: 1, B.id: 1, C.id: 1}, graph=graph),
            FallbackScene("breaker open on the failed model", A, {A.id: 1}, graph=graph,
                          cooling=frozenset({A.id, COOLING.id})),
            FallbackScene("deadline near", A, {A.id: 1}, seconds_left=0.05, graph=graph),
            FallbackScene("deadline passed", B, {A.id: 1, B.id: 1}, seconds_left=-1.0, graph=graph),
        ]

    def _cases(self) -> Iterator[tuple[FallbackScene, e.SquirrelError]]:
        for scene in self.scenes():
            for error in self.errors():
                yield scene, error

    def _handles(self, strategy: FallbackStrategy, scene: FallbackScene, error: BaseException,
                 ctx: FallbackContext | None = None) -> bool:
        try:
            return strategy.can_handle(error, ctx or scene.context()) is True
        except Exception as exc:
            raise AssertionError(f"can_handle raised {type(exc).__name__} for {_what(error)} ({scene.label}): "
                                 "it must answer for every error") from exc

    async def _step(self, strategy: FallbackStrategy, error: BaseException, ctx: FallbackContext
                    ) -> FallbackStep | None:
        # The chain waits a step's delay itself: a strategy that sleeps holds the request past
        # its deadline. One second of grace: this checks the deadline, not speed.
        with anyio.move_on_after(max(ctx.remaining(), 0.0) + 1.0) as scope:
            try:
                step = await strategy.try_fallback(error, ctx)
            except Exception as exc:
                raise AssertionError(f"try_fallback raised {type(exc).__name__} for {_what(error)} "
                                     "(return None to let the next strategy decide)") from exc
        assert not scope.cancelled_caught, (
            f"try_fallback waited past the deadline for {_what(error)}: return the wait as the "
            "FallbackStep's delay (the chain waits it, within the deadline)")
        return step

    async def _steps(self, strategy: FallbackStrategy
                     ) -> list[tuple[FallbackScene, BaseException, FallbackContext, FallbackStep | None]]:
        """Each case the strategy handles, with the step it proposed."""
        out: list[tuple[FallbackScene, BaseException, FallbackContext, FallbackStep | None]] = []
        for scene, error in self._cases():
            if self._handles(strategy, scene, error):
                ctx = scene.context()
                out.append((scene, error, ctx, await self._step(strategy, error, ctx)))
        return out

    def test_strategy_is_well_formed(self, strategy: FallbackStrategy) -> None:
        assert isinstance(strategy, FallbackStrategy), "a strategy has name, can_handle and try_fallback"
        assert isinstance(strategy.name, str) and strategy.name and strategy.name == strategy.name.strip(), \
            "a strategy needs a name ([fallback] strategies lists it)"
        assert inspect.iscoroutinefunction(strategy.try_fallback), \
            "try_fallback must be async (the chain awaits it)"
        assert not inspect.iscoroutinefunction(strategy.can_handle), "can_handle must be a plain function"

    def test_can_handle_is_total_and_pure(self, strategy: FallbackStrategy) -> None:
        """``can_handle`` answers True or False for every error in every situation, never
        raises, answers the same twice, and changes nothing in the context."""
        for scene, error in self._cases():
            ctx = scene.context()
            before = _snapshot(ctx)
            try:
                first, second = strategy.can_handle(error, ctx), strategy.can_handle(error, ctx)
            except Exception as exc:
                raise AssertionError(f"can_handle raised {type(exc).__name__} for {_what(error)} "
                                     f"({scene.label}): it must answer for every error") from exc
            assert isinstance(first, bool), f"can_handle returned {first!r}, not a bool, for {_what(error)}"
            assert first == second, f"can_handle answered twice differently for {_what(error)} ({scene.label})"
            assert _snapshot(ctx) == before, f"can_handle changed the context for {_what(error)} ({scene.label})"

    async def test_try_fallback_returns_a_step_or_none(self, strategy: FallbackStrategy) -> None:
        """Where ``can_handle`` said yes, ``try_fallback`` returns a ``FallbackStep`` (a finite
        delay >= 0) or None, without raising, and changes nothing in the context."""
        for scene, error in self._cases():
            if not self._handles(strategy, scene, error):
                continue
            ctx = scene.context()
            before = _snapshot(ctx)
            step = await self._step(strategy, error, ctx)
            assert step is None or isinstance(step, FallbackStep), \
                f"try_fallback returned {step!r}, not a FallbackStep or None, for {_what(error)}"
            if step is not None:
                assert isinstance(step.model, ModelCard), f"the step's model is {step.model!r}, not a card"
                assert isinstance(step.delay, int | float) and math.isfinite(step.delay) and step.delay >= 0, \
                    f"the step's delay is {step.delay!r}: a finite number of seconds >= 0"
            assert _snapshot(ctx) == before, f"try_fallback changed the context for {_what(error)} ({scene.label})"

    async def test_steps_stay_within_the_permitted_models(self, strategy: FallbackStrategy) -> None:
        """A step goes to the failed model (a retry), a ranked candidate, or a model
        ``ctx.reachable`` gives (a graph edge the request may follow): never to a model outside
        them (``allowed_models``, the requirements), nor to one whose breaker is open unless
        it is the retry of the failed model."""
        for scene, error, ctx, step in await self._steps(strategy):
            if step is None or step.model.id == ctx.current.id:
                continue
            assert step.model.id in scene.permitted(), (
                f"a step to {step.model.id}, outside the candidates and what ctx.reachable gives, for "
                f"{_what(error)} ({scene.label})")
            assert ctx.is_available(step.model.id), (
                f"a step to {step.model.id}, whose breaker is open, for {_what(error)} ({scene.label})")

    async def test_never_goes_back_to_a_failed_model(self, strategy: FallbackStrategy) -> None:
        """Only a retry (the failed model itself) may go to a model already tried."""
        for scene, error, ctx, step in await self._steps(strategy):
            if step is not None and step.model.id != ctx.current.id:
                assert step.model.id not in ctx.tries, (
                    f"went back to {step.model.id}, which failed already, after {ctx.current.id} failed "
                    f"with {_what(error)} ({scene.label})")

    async def test_respects_the_deadline(self, strategy: FallbackStrategy) -> None:
        """A step never waits past the deadline: a delay of 0, or shorter than the time left
        when the strategy was asked (read after it answered, the time it took to answer, long
        on a loaded machine, counted against a strategy that was right)."""
        for scene, error in self._cases():
            if not self._handles(strategy, scene, error):
                continue
            ctx = scene.context()
            left = ctx.remaining()
            step = await self._step(strategy, error, ctx)
            if step is not None and step.delay > 0:
                assert step.delay < left, (
                    f"a step waiting {step.delay:.3g}s with {left:.3g}s left, past the deadline, "
                    f"for {_what(error)} ({scene.label}): return None instead")

    async def test_steps_end(self, strategy: FallbackStrategy) -> None:
        """Fed its own steps, each failing again with the same error, the strategy stops
        proposing within :data:`MAX_STEPS` (retries are bounded by the strategy itself, not
        only by the chain's ``max_attempts``)."""
        for scene, error in self._cases():
            if not scene.roomy:
                continue
            ctx = scene.context()
            for _ in range(MAX_STEPS):
                if not self._handles(strategy, scene, error, ctx):
                    break
                step = await self._step(strategy, error, ctx)
                if step is None:
                    break
                ctx.tries[step.model.id] = ctx.tries.get(step.model.id, 0) + 1
                ctx.current = step.model
            else:
                raise AssertionError(f"still proposing steps after {MAX_STEPS} failures in a row with "
                                     f"{_what(error)} ({scene.label}): bound the retries")

    async def test_same_inputs_same_step(self, strategy: FallbackStrategy) -> None:
        """The same failure in the same situation leads to the same model (invariant 4; a
        backoff's jitter may vary the delay)."""
        for scene, error in self._cases():
            if not scene.roomy or not self._handles(strategy, scene, error):
                continue
            first = await self._step(strategy, error, scene.context())
            second = await self._step(strategy, error, scene.context())
            assert (first is None) == (second is None) and (
                first is None or second is None or first.model.id == second.model.id), (
                f"the same failure led twice differently: {first!r} then {second!r}, for {_what(error)} "
                f"({scene.label})")
