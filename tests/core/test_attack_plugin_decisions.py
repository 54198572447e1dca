"""The attack on the code plugins add to the decisions (scoring rules, fallback strategies):
whatever such code raises or returns, a request ends in a success or a ``SquirrelError`` naming
the plugin (invariant 7), and the fallback chain's circuit breakers never leak a half-open
trial to a model that was never called."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    BreakerConfig,
    CircuitBreakers,
    FallbackChain,
    FallbackStep,
    FallbackStrategyType,
    PluginError,
    ScoringRule,
    ServerError,
    hookimpl,
)
from squirrel_models.testing import Fail, Reply

from .helpers import card

pytestmark = pytest.mark.anyio

FREE = {"input": 0, "output": 0}


def config(**extra: Any) -> dict[str, Any]:
    return {"providers": [{"name": "p", "type": "scripted", "options": {"models": ["a", "b"]},
                           "models": [{"name": "a", "price": FREE, "quality": 0.9},
                                      {"name": "b", "price": FREE, "quality": 0.1}]}], **extra}


# --- fallback strategies ------------------------------------------------------------------


class _Strategy:
    name = "odd"

    def __init__(self, where: str, what: Any) -> None:
        self.where, self.what = where, what

    def can_handle(self, error: BaseException, ctx: Any) -> bool:
        if self.where == "can_handle":
            raise self.what
        return True

    async def try_fallback(self, error: BaseException, ctx: Any) -> Any:
        if self.where == "try_fallback":
            raise self.what
        return self.what(ctx) if callable(self.what) else self.what


ODD_STRATEGIES = [
    ("can_handle", ZeroDivisionError("oops")),
    ("try_fallback", KeyError("no such model")),
    ("returns", "p/b"),  # a model id, not a step
    ("returns", lambda ctx: FallbackStep("p/b", 0.0)),  # type: ignore[arg-type]
    ("returns", lambda ctx: ctx.candidates[1]),  # a card, not a step
]


@pytest.mark.parametrize(("where", "what"), ODD_STRATEGIES)
async def test_a_strategy_that_raises_or_returns_no_step_is_a_plugin_error(
        squirrel_plugins: Any, squirrel_manager: Any, where: str, what: Any) -> None:
    """Before: its ZeroDivisionError, KeyError or the AttributeError of reading ``.delay`` on
    what it returned left ``complete()`` as it was: not a SquirrelError."""

    class Plugin:
        @hookimpl
        def register_fallback_strategies(self) -> list[FallbackStrategyType]:
            return [FallbackStrategyType("odd", lambda options: _Strategy(where, what))]

    squirrel_plugins.register(Plugin(), "odd-strategy")
    cfg = config(fallback={"strategies": ["odd", "next_candidate"], "max_attempts": 3})
    async with squirrel_manager(cfg, plugins=squirrel_plugins) as manager:
        manager.providers["p"].script("a", Fail(ServerError("HTTP 500", status_code=500)))
        manager.providers["p"].script("b", Reply("from b"))
        with pytest.raises(PluginError) as info:
            await manager.complete(AIRequest.from_prompt("hi"))
    assert "fallback strategy odd" in str(info.value), info.value
    assert "p/a" in str(info.value) or "FallbackStep" in str(info.value)


async def test_a_strategy_that_declines_lets_the_next_decide(squirrel_plugins: Any,
                                                             squirrel_manager: Any) -> None:
    """The guard changes nothing for a strategy that keeps the contract (None: the next one)."""

    class Plugin:
        @hookimpl
        def register_fallback_strategies(self) -> list[FallbackStrategyType]:
            return [FallbackStrategyType("odd", lambda options: _Strategy("returns", None))]

    squirrel_plugins.register(Plugin(), "odd-strategy")
    cfg = config(fallback={"strategies": ["odd", "next_candidate"], "max_attempts": 3})
    async with squirrel_manager(cfg, plugins=squirrel_plugins) as manager:
        manager.providers["p"].script("a", Fail(ServerError("HTTP 500", status_code=500)))
        manager.providers["p"].script("b", Reply("from b"))
        response = await manager.complete(AIRequest.from_prompt("hi"))
    assert response.text == "from b"
    assert [a.model_id for a in response.attempts] == ["p/a", "p/b"]


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_skipped_step_claims_no_trial_of_the_models_it_does_not_call() -> None:
    """A step to a model whose breaker is open (a strategy's choice, or another request took
    the model's half-open trial meanwhile) falls to the best untried candidate. Before, every
    untried candidate's breaker was acquired to find it: the half-open trials of all but the
    first were claimed for calls never made, and those models were refused for good."""
    clock = _Clock()
    a, b, c, d = card("a"), card("b"), card("c"), card("d")
    breakers = CircuitBreakers(BreakerConfig(failure_threshold=1, base_cooldown=1, max_cooldown=5),
                               clock)
    breakers.failure(c.id)
    breakers.failure(d.id)
    clock.now += 1.5  # c and d: half-open, each with its trial due
    breakers.failure(b.id)  # b: open

    class ToB:
        name = "to_b"

        def can_handle(self, error: BaseException, ctx: Any) -> bool:
            return True

        async def try_fallback(self, error: BaseException, ctx: Any) -> FallbackStep:
            return FallbackStep(b, 0.0, "to b")

    calls: list[str] = []

    async def attempt(model: Any, n: int) -> str:
        calls.append(model.id)
        if model.id == a.id:
            raise ServerError("HTTP 500", model_id=model.id, status_code=500)
        return "ok"

    chain = FallbackChain([ToB()], max_attempts=5, breakers=breakers, clock=clock)
    assert await chain.run([a, b, c, d], attempt, deadline=clock.now + 100) == "ok"
    assert calls == [a.id, c.id]
    assert not breakers.is_open(c.id)  # its trial succeeded: closed
    assert not breakers.is_open(d.id), "d's trial was claimed for a call never made"
    assert breakers.acquire(d.id)


# --- scoring rules ------------------------------------------------------------------------


def _rule_returning(value: Any) -> Any:
    def fn(card: Any, req: Any, stats: Any, shape: Any) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value
    return fn


@pytest.mark.parametrize("uses", [frozenset(), frozenset({"request"}), frozenset({"stats"})])
@pytest.mark.parametrize("value", [KeyError("boom"), None, "0.5", [0.5], True, 10 ** 400,
                                   Decimal("sNaN")], ids=repr)
async def test_a_rule_that_raises_or_returns_no_number_is_a_plugin_error(
        squirrel_plugins: Any, squirrel_manager: Any, value: Any, uses: frozenset[str]) -> None:
    """Before: a ``TypeError`` ('<' not supported between 'NoneType' and 'float') or the rule's
    own exception left ``rank()`` and ``complete()``; cached (``uses`` empty), per request and
    per model with statistics alike."""

    class Plugin:
        @hookimpl
        def register_scoring_rules(self) -> list[ScoringRule]:
            return [ScoringRule("odd", _rule_returning(value), 1.0, uses)]

    squirrel_plugins.register(Plugin(), "odd-rule")
    async with squirrel_manager(config(scoring={"weights": {"odd": 1.0}}),
                                plugins=squirrel_plugins) as manager:
        for _ in range(2):  # a failed ranking leaves no half-built cache entry behind
            with pytest.raises(PluginError, match="scoring rule odd") as info:
                manager.rank()
            assert "p/a" in str(info.value)
        with pytest.raises(PluginError, match="scoring rule odd"):
            await manager.complete(AIRequest.from_prompt("hi"))


@pytest.mark.parametrize(("value", "score"), [(Decimal("0.25"), 0.25), (Fraction(1, 4), 0.25),
                                              (1, 1.0), (math.nan, 0.0), (math.inf, 1.0),
                                              (-3, 0.0)], ids=repr)
async def test_a_rule_returning_any_real_number_is_read_as_documented(
        squirrel_plugins: Any, squirrel_manager: Any, value: Any, score: float) -> None:
    """A Decimal (a rule reading prices) was a TypeError in the weighted sum; every real number
    is read as a float, clamped to [0, 1], NaN as 0 (docs/hooks.md)."""

    class Plugin:
        @hookimpl
        def register_scoring_rules(self) -> list[ScoringRule]:
            return [ScoringRule("odd", _rule_returning(value), 1.0)]

    squirrel_plugins.register(Plugin(), "odd-rule")
    async with squirrel_manager(config(scoring={"weights": {"odd": 1.0}}),
                                plugins=squirrel_plugins) as manager:
        decision = manager.rank()
        assert {c.scores["odd"] for c in decision.candidates} == {score}
        manager.providers["p"].script(decision.candidates[0].model_id.split("/")[1], Reply("x"))
        response = await manager.complete(AIRequest.from_prompt("hi"))
    assert response.model == decision.candidates[0].model_id
