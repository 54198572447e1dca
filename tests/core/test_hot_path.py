"""The request path does per request only what the request needs: the prompt is counted only
when something reads the count (a budget, a cost ceiling, context pressure, metrics that
record), the ranking is sorted only when more than the best model is read, and the fallback
chain reads the candidates one by one. What it does do is unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from squirrel_models import AIRequest, CostCeilingExceeded, Message, ModelRequirements, RateLimitTooSmall
from squirrel_models.fallback import CircuitBreakers, FallbackChain
from squirrel_models.metrics import Metrics
from squirrel_models.ratelimit import UpstreamLimits
from squirrel_models.scoring import RequestShape
from squirrel_models.selection import ModelSelector, rules_from
from squirrel_models.testing import Reply, StreamReply
from squirrel_models.tokens import PRESSURE_SLACK
from squirrel_models.types import ModelCard

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)
QUIET = {"meter_provider": NoOpMeterProvider(), "tracer_provider": NoOpTracerProvider()}


class CountingSpy:
    """Wraps a manager's token counter and records what it was asked to count."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.prompts = 0

    def __call__(self, card: ModelCard, request: AIRequest | None, text: str | None) -> Any:
        if request is not None:
            self.prompts += 1
        return self.counter(card, request, text)


def spy_on(mm: Any) -> CountingSpy:
    spy = CountingSpy(mm.tokens.counter)
    mm.tokens.counter = spy
    return spy


async def test_no_count_when_nothing_reads_it(squirrel_manager) -> None:
    p = provider("p", card("a", price=("1", "2")))
    p.script("a", Reply("hi"), Reply("hi"))
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(p.models[0], p)
        spy = spy_on(mm)
        resp = await mm.complete(PROMPT)
        assert spy.prompts == 0
        assert resp.cost == (resp.usage.input_tokens * Decimal(1)
                             + resp.usage.output_tokens * Decimal(2)) / 1_000_000
        assert p.last_request.max_tokens == 10  # the output cap sent is unchanged
        async with mm.stream(PROMPT) as s:
            assert "".join([c.text async for c in s]) == "hi"
        assert spy.prompts == 0


@pytest.mark.parametrize("why", ["budget", "ceiling", "metrics"])
async def test_counted_when_something_reads_it(squirrel_manager, squirrel_metrics, why: str
                                               ) -> None:
    p = provider("p", card("a", price=("1", "2")))
    p.script("a", Reply("hi"))
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "1"}]}} if why == "budget" else None
    kw: dict[str, Any] = {} if why == "metrics" else dict(QUIET)
    req = ModelRequirements(max_request_cost=Decimal(1)) if why == "ceiling" else None
    async with squirrel_manager(cfg, **kw) as mm:
        mm.register_model(p.models[0], p)
        spy = spy_on(mm)
        await mm.complete(PROMPT, req)
        assert spy.prompts == 1
    if why == "metrics":
        assert squirrel_metrics.points("squirrel.tokens.estimate_ratio")


async def test_announced_request_limits_need_no_count(squirrel_manager) -> None:
    """An upstream that announces its request limits (OpenAI's headers on every answer) makes
    the rate limiter busy, but admitting requests reads no token count: nothing is counted."""
    p = provider("p", card("a", price=("1", "2")))
    announced = UpstreamLimits(requests_limit=30_000, requests_remaining=29_999)
    p.script("a", *[Reply("hi", rate_limits=announced)] * 3)
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(p.models[0], p)
        spy = spy_on(mm)
        for _ in range(3):
            await mm.complete(PROMPT)
        assert not mm.limiter.idle
        assert spy.prompts == 0


@pytest.mark.parametrize("left", [10, 10_000_000])
async def test_announced_token_limits_count_only_when_the_bound_may_not_fit(
        squirrel_manager, left: int) -> None:
    """An announced token budget is checked with the cheap upper bound while that fits it;
    only a budget the bound may not fit has the prompt counted (and the refusal, if any,
    comes from the exact figure)."""
    p = provider("p", card("a", price=("1", "2")))
    announced = UpstreamLimits(tokens_limit=left, tokens_remaining=left, tokens_reset=60.0)
    p.script("a", Reply("hi", rate_limits=announced), Reply("hi"))
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(p.models[0], p)
        spy = spy_on(mm)
        await mm.complete(PROMPT)  # the first answer announces the budget
        try:
            await mm.complete(PROMPT)
        except RateLimitTooSmall:  # the announced limit itself is below the worst case
            assert left == 10
        assert spy.prompts == (1 if left == 10 else 0)


async def test_a_ceiling_still_refuses_before_any_call(squirrel_manager) -> None:
    p = provider("p", card("a", price=("1000000", "1000000")))
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(CostCeilingExceeded):
            await mm.complete(PROMPT, ModelRequirements(max_request_cost=Decimal("0.0001")))
    assert p.calls.get("a", 0) == 0


async def test_counted_under_context_pressure(squirrel_manager) -> None:
    """A prompt that may leave the window less room than the output cap is counted: the cap
    sent upstream is what the exact count leaves, as before."""
    small = card("small", price=("1", "2"), context_window=PRESSURE_SLACK + 40, max_output_tokens=4000)
    p = provider("p", small)
    p.script("small", Reply("hi"))
    request = AIRequest.from_prompt("hello there")  # no max_tokens: the model's whole output
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(small, p)
        spy = spy_on(mm)
        await mm.complete(request)
        assert spy.prompts >= 1
        exact = mm.tokens.estimate(request, small)
    assert p.last_request.max_tokens == exact.max_output == small.context_window - exact.prompt.tokens


async def test_a_stream_without_usage_is_counted_when_it_ends(squirrel_manager) -> None:
    """A count needed after the call (a stream whose server sends no usage is charged for
    what the library counts) is made then, the same as it would have been before."""
    p = provider("p", card("a", price=("1", "2")))
    p.script("a", StreamReply(["one ", "two"], send_usage=False))
    async with squirrel_manager(None, **QUIET) as mm:
        mm.register_model(p.models[0], p)
        spy = spy_on(mm)
        async with mm.stream(PROMPT) as s:
            assert "".join([c.text async for c in s]) == "one two"
        assert spy.prompts == 1
        assert s.response is not None
        usage = s.response.usage
        assert usage.source == "counted"
        assert usage.input_tokens == mm.tokens.count_prompt(p.models[0], PROMPT).tokens


def test_metrics_know_whether_they_record() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    quiet = Metrics(NoOpMeterProvider(), NoOpTracerProvider())
    assert not quiet.recording()
    assert not quiet.tracer.start_span("chat").is_recording()
    live = Metrics(MeterProvider(), TracerProvider())
    assert live.recording()
    span = live.tracer.start_span("chat")
    assert span.is_recording()
    span.end()


# --- the ranking and the chain ---------------------------------------------------------------


def _selector(cards: Sequence[ModelCard]) -> ModelSelector:
    from squirrel_models.scoring import BUILTIN_RULES

    sel = ModelSelector(rules_from(list(BUILTIN_RULES), {}))
    sel.set_models(cards)
    return sel


def test_decision_cards_are_built_once_and_match_the_lazy_view() -> None:
    cards = [card(f"m{i:03d}", price=(str(1 + i % 7), str(1 + i % 5)), context_window=1000 * (1 + i % 3))
             for i in range(60)]
    sel = _selector(cards)
    d = sel.rank(ModelRequirements(), RequestShape(100, 10))
    view = d.ranked
    first = view[0]
    assert d._lazy is not None and d._lazy._order is None  # the best one costs no sort
    assert d.chosen is not None and d.chosen.card == first
    assert d.cards is d.cards
    assert list(view) == list(d.cards) == [c.card for c in d.candidates]
    assert view[0] == d.cards[0] and view[5] == d.cards[5] and tuple(view[2:4]) == d.cards[2:4]
    assert len(view) == len(d.cards)


def test_ties_go_to_the_lowest_id_first_or_sorted() -> None:
    cards = [card(f"m{i}", price=("1", "1")) for i in (5, 3, 9, 1)]
    d = _selector(cards).rank(ModelRequirements(), RequestShape(10, 10))
    assert d.ranked[0].id == "p/m1" == d.cards[0].id
    assert [c.id for c in d.cards] == ["p/m1", "p/m3", "p/m5", "p/m9"]


class Watched(Sequence[ModelCard]):
    """A sequence of cards that records which positions were read."""

    def __init__(self, cards: Sequence[ModelCard]) -> None:
        self.cards, self.read = list(cards), set[int]()

    def __len__(self) -> int:
        return len(self.cards)

    def __getitem__(self, i: Any) -> Any:
        self.read.add(i)
        return self.cards[i]

    def __iter__(self) -> Iterator[ModelCard]:
        for i, c in enumerate(self.cards):
            self.read.add(i)
            yield c


async def test_the_chain_reads_only_the_first_candidate_when_it_answers() -> None:
    cards = [card(f"m{i:03d}") for i in range(100)]
    watched = Watched(cards)
    chain = FallbackChain([], 3, CircuitBreakers())

    async def attempt(c: ModelCard, n: int) -> str:
        return c.id

    assert await chain.run(watched, attempt, deadline=float("inf")) == "p/m000"
    assert watched.read == {0}


@pytest.mark.parametrize("request_", [
    AIRequest.from_prompt("hello there"),
    AIRequest.from_prompt("héllo ☃ " * 40, system="sys"),
    AIRequest.from_prompt("x" * 1000, tools=[{"type": "function", "function": {"name": "f"}}]),
    AIRequest.from_prompt("call it", tool_choice="auto", tools=[{"type": "function", "function": {"name": "f"}}]),
    AIRequest([Message.system("be brief"), Message.user("héllo"), Message.user("plain")]),
    AIRequest([Message.system("be brief"), Message("user", "hi", name="ann")]),
    attrs.evolve(AIRequest.from_prompt("short"), messages=(Message.user("x" * 700),)),
    attrs.evolve(AIRequest.from_prompt("short"), max_tokens=9),
], ids=["ascii", "unicode", "tools", "tool_choice", "mixed", "named", "evolved", "evolved-cap"])
def test_prompt_bounds_are_the_two_bounds(request_: AIRequest) -> None:
    from squirrel_models.tokens import lower_bound, prompt_bounds, upper_bound

    assert prompt_bounds(request_) == (upper_bound(request_).tokens, lower_bound(request_))


@pytest.mark.parametrize("latency", [None, 0.2])
def test_a_single_candidate_is_scored_when_read_with_its_statistics_of_then(
        latency: float | None) -> None:
    """One model meets the requirements: its place needs no score, so its scores are computed
    when first read, from the statistics the ranking saw (later observations change nothing),
    and equal to those of a ranking that scores it at once (beside a second model)."""
    a = card("a", price=("1", "2"))
    other = card("b", price=("5", "6"), capabilities=frozenset({"chat", "completion"}))
    one, two = _selector([a]), _selector([a, other])
    two.stats = one.stats
    if latency is not None:
        one.stats.finished("p/a", ok=True, latency_s=latency)
    req = ModelRequirements(min_capabilities=frozenset({"chat"}))
    shape = RequestShape(100, 10)
    lazy = one.rank(req, shape)
    assert lazy._lazy is not None and lazy._lazy._scores is None  # nothing scored yet
    eager = two.rank(req, shape).candidates
    one.stats.finished("p/a", ok=False, latency_s=None)  # after the ranking: not in it
    one.stats.finished("p/a", ok=True, latency_s=5.0)
    (got,) = lazy.candidates
    want = next(c for c in eager if c.card.id == "p/a")
    assert got == want
    assert lazy.ranked[0] == a and lazy.chosen == want


def _both_rules(card: ModelCard, req: ModelRequirements, stats: Any, shape: RequestShape) -> float:
    """A rule that reads the statistics and the request (its column is never cached)."""
    lat = stats.latency_ms if stats.latency_ms is not None else 100.0
    return 1.0 / (1.0 + lat / 1000.0 + shape.prompt_tokens / 10_000.0)


@settings(max_examples=150, deadline=None)
@given(latencies=st.lists(st.floats(0.001, 30.0), min_size=1, max_size=4),
       failures=st.integers(0, 3), in_flight=st.integers(0, 5),
       prompt=st.integers(1, 50_000), output=st.none() | st.integers(1, 4_000),
       max_latency=st.none() | st.floats(1.0, 60_000.0),
       weights=st.dictionaries(st.sampled_from(["cost", "latency", "quality", "context",
                                                "reliability", "tags", "both"]),
                               st.floats(0.0, 5.0), max_size=4))
def test_a_single_candidates_scores_are_those_of_the_full_scoring(
        latencies: list[float], failures: int, in_flight: int, prompt: int, output: int | None,
        max_latency: float | None, weights: dict[str, float]) -> None:
    """The scores of a ranking of one model, computed directly when read (the gateway reads
    them for every answer's reason header), are the very floats the full scoring
    (``ModelSelector._score``) gives: totals, per-rule scores and columns, for any
    statistics, weights, request shape and latency ceiling, with a rule reading both the
    statistics and the request."""
    from squirrel_models.scoring import BUILTIN_RULES, ScoringRule
    from squirrel_models.selection import _ScoreOne
    from squirrel_models.stats import from_figures

    rules = [*BUILTIN_RULES, ScoringRule("both", _both_rules, 0.5, {"stats", "request"})]
    if not any(weights.get(r.name, r.default_weight) for r in rules):
        weights["quality"] = 1.0
    sel = ModelSelector(rules_from(rules, weights))
    sel.set_models([card("a", price=("1", "2"), context_window=100_000)])
    for lat in latencies:
        sel.stats.finished("p/a", ok=True, latency_s=lat)
    for _ in range(failures):
        sel.stats.finished("p/a", ok=False, latency_s=None)
    for _ in range(in_flight):
        sel.stats.started("p/a")
    req = ModelRequirements(max_latency_ms=max_latency)
    shape = RequestShape(prompt, output)
    entry, _ = sel._entry(req)
    figures = sel.stats.figures("p/a")
    assert figures is not None
    direct = _ScoreOne(sel, entry, req, shape, None, figures)()
    full = sel._score(entry, {0: from_figures(figures)}, req, shape, {})
    assert direct[0] == full[0]
    assert direct[2] == full[2]
    assert [(n, c[0]) for n, c in direct[1]] == [(n, c[0]) for n, c in full[1]]


def test_a_single_candidate_over_the_latency_limit_is_excluded() -> None:
    a = card("a", price=("1", "2"))
    sel = _selector([a])
    sel.stats.finished("p/a", ok=True, latency_s=2.0)
    d = sel.rank(ModelRequirements(max_latency_ms=500))
    assert not d.ranked and d.chosen is None
    assert d.excluded["p/a"].startswith("latency 2000 ms > 500 ms")


def test_the_request_path_makes_no_closure_cells() -> None:
    """A function whose code has closure cells makes them on every call, whether or not the
    closure is built: the request path made 24 cells and 3 functions per request, all tracked
    by the garbage collector and alive while the request waits upstream (issue 16). The
    rare paths that need a closure (a miss of the ranking cache, a refusal, a settlement, a
    fallback) live in functions of their own."""
    from squirrel_models.attempts import Attempts
    from squirrel_models.fallback import FallbackChain
    from squirrel_models.manager import ModelManager

    path = [ModelManager.complete, ModelManager._prepared, ModelManager._shape,
            ModelManager._request, Attempts._attempt, Attempts._begin_attempt, Attempts._send,
            Attempts._report, FallbackChain.run_with, ModelSelector.rank, ModelSelector._entry,
            ModelSelector._one]
    assert {f.__qualname__: f.__code__.co_cellvars for f in path
            if f.__code__.co_cellvars} == {}
