"""The fallback chain on its own: strategies, bounds, circuit breakers, graphs."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from squirrel_models import (
    AllCoolingDown,
    BreakerConfig,
    CircuitBreakers,
    ConfigError,
    FallbackChain,
    FallbackExhausted,
    RateLimited,
    ServerError,
)
from squirrel_models.builtins.fallback import Cheaper, Graph, LargerContext, NextCandidate, Retry
from squirrel_models.errors import BudgetExceeded
from squirrel_models.fallback import check_graph

from .helpers import card

pytestmark = pytest.mark.anyio

A, B, C = card("a", context_window=100), card("b", context_window=1000), card("c", context_window=10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_cooldown_lengthens_and_half_opens() -> None:
    clock = Clock()
    br = CircuitBreakers(BreakerConfig(failure_threshold=2, base_cooldown=1, max_cooldown=5), clock)
    br.failure("m")
    assert br.acquire("m")
    br.failure("m")  # threshold reached: open for 1 s
    assert br.is_open("m") and not br.acquire("m")
    clock.now += 1.01
    assert br.acquire("m")  # the half-open trial
    assert not br.acquire("m")  # only one trial at a time
    br.failure("m")  # the trial failed: open again, twice as long
    assert br.retry_in("m") == pytest.approx(2.0)
    clock.now += 2.01
    assert br.acquire("m")
    br.failure("m")
    assert br.retry_in("m") == pytest.approx(4.0)
    clock.now += 4.01
    assert br.acquire("m")
    br.failure("m")
    assert br.retry_in("m") == pytest.approx(5.0)  # capped
    clock.now += 5.01
    assert br.acquire("m")
    br.success("m")
    assert not br.is_open("m") and br.acquire("m") and br.acquire("m")


def test_retry_after_holds_every_call() -> None:
    clock = Clock()
    br = CircuitBreakers(BreakerConfig(failure_threshold=5), clock)
    br.failure("m", RateLimited(retry_after=3))
    assert not br.acquire("m")
    clock.now += 3.01
    assert br.acquire("m")


def test_graph_cycles_are_found() -> None:
    check_graph({"a": ["b", "c"], "b": ["c"], "c": []})
    with pytest.raises(ConfigError, match="fallback cycle b -> c -> b"):
        check_graph({"a": ["b"], "b": ["c"], "c": ["b"]})
    with pytest.raises(ConfigError, match="a -> a"):
        FallbackChain([NextCandidate()], graph={"a": ("a",)})


def chain(*strategies, **kw) -> FallbackChain:
    return FallbackChain(list(strategies), **kw)


def script(outcomes: dict[str, list]) -> tuple[list[str], object]:
    calls: list[str] = []

    async def attempt(model, n):
        calls.append(model.model)
        outcome = outcomes[model.model].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, attempt


async def test_next_candidate_walks_the_ranking() -> None:
    calls, attempt = script({"a": [ServerError("x")], "b": [ServerError("y")], "c": ["done"]})
    result = await chain(NextCandidate(), max_attempts=5).run([A, B, C], attempt, deadline=1e12)
    assert result == "done"
    assert calls == ["a", "b", "c"]


async def test_graph_overrides_ranking_order() -> None:
    calls, attempt = script({"a": [ServerError("x")], "c": ["from c"]})
    ch = chain(Graph(), NextCandidate(), graph={"p/a": ("p/c", "p/b")})
    assert await ch.run([A, B, C], attempt, deadline=1e12) == "from c"
    assert calls == ["a", "c"]


async def test_larger_context_skips_smaller_windows() -> None:
    from squirrel_models import ContextWindowExceeded

    calls, attempt = script({"a": [ContextWindowExceeded(needed=500)], "b": ["big"]})
    result = await chain(LargerContext()).run([A, C, B], attempt, deadline=1e12)
    assert result == "big"
    assert calls == ["a", "b"]


async def test_cheaper_on_budget_pressure() -> None:
    costs = {"p/a": Decimal(5), "p/b": Decimal(9), "p/c": Decimal(1)}
    refused = BudgetExceeded(scope="global", period="total", limit=Decimal(4), committed=Decimal(0),
                             reserved=Decimal(0), requested=Decimal(5))
    calls, attempt = script({"a": [refused], "c": ["cheap"]})
    ch = chain(Cheaper())
    result = await ch.run([A, B, C], attempt, deadline=1e12, worst_case=lambda card: costs[card.id])
    assert result == "cheap"
    assert calls == ["a", "c"]


async def test_max_attempts_bounds_upstream_calls_and_keeps_every_error() -> None:
    calls, attempt = script({m: [ServerError(m)] * 5 for m in "abc"})
    with pytest.raises(FallbackExhausted) as info:
        await chain(Retry(max_retries=5, base_delay=0), NextCandidate(), max_attempts=4).run(
            [A, B, C], attempt, deadline=1e12)
    assert len(calls) == 4
    # Three failures open a's breaker (default threshold 3), so the retry gives way to b.
    assert [str(e) for e in info.value.errors] == ["a", "a", "a", "b"]
    assert "max_attempts=4 reached" in str(info.value)


def refusal(scope: str) -> BudgetExceeded:
    return BudgetExceeded(scope=scope, period="total", limit=Decimal(0), committed=Decimal(0),
                          reserved=Decimal(0), requested=Decimal(1))


async def test_refusals_do_not_count_as_attempts() -> None:
    _, attempt = script({"a": [refusal("model:p/a")], "b": [refusal("provider:p")], "c": ["ok"]})
    assert await chain(NextCandidate(), max_attempts=1).run([A, B, C], attempt, deadline=1e12) == "ok"


async def test_exhausted_global_budget_stops_at_once() -> None:
    calls, attempt = script({"a": [refusal("global")], "b": ["never"]})
    with pytest.raises(BudgetExceeded):
        await chain(NextCandidate()).run([A, B], attempt, deadline=1e12)
    assert calls == ["a"]


async def test_open_breakers_are_skipped_without_calls() -> None:
    clock = Clock()
    br = CircuitBreakers(BreakerConfig(failure_threshold=1, base_cooldown=10), clock)
    br.failure("p/a")
    calls, attempt = script({"b": ["b ok"]})
    records: list = []
    result = await chain(NextCandidate(), breakers=br).run([A, B], attempt, deadline=1e12, records=records)
    assert result == "b ok"
    assert calls == ["b"]
    assert [(r.model_id, r.outcome, r.note) for r in records] == [
        ("p/a", "skipped", "circuit breaker open"), ("p/b", "ok", "")]
    br.failure("p/b")
    with pytest.raises(AllCoolingDown) as info:
        await chain(NextCandidate(), breakers=br).run([A, B], attempt, deadline=1e12)
    assert info.value.retry_in == pytest.approx(10.0)
    assert info.value.models == ("p/a", "p/b")


async def test_retry_declines_past_the_deadline() -> None:
    calls, attempt = script({"a": [RateLimited(retry_after=60)], "b": ["b"]})
    ch = chain(Retry(), NextCandidate())
    assert await ch.run([A, B], attempt, deadline=time.monotonic() + 5) == "b"
    assert calls == ["a", "b"]


async def test_single_failure_is_raised_as_itself() -> None:
    _, attempt = script({"a": [ServerError("only")]})
    with pytest.raises(ServerError, match="only"):
        await chain(NextCandidate()).run([A], attempt, deadline=1e12)
