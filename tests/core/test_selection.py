"""Selection: hard filters with reasons, weighted per-rule scores, determinism, the cache."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import (
    CapabilityNotSupported,
    InvalidRequest,
    ModelCard,
    ModelRequirements,
    ModelSelector,
    Price,
    RequestShape,
)
from squirrel_models.scoring import BUILTIN_RULES
from squirrel_models.selection import rules_from
from squirrel_models.stats import StatsRegistry

from .helpers import card


def selector(*cards: ModelCard, weights=None, **kw) -> ModelSelector:
    s = ModelSelector(rules_from(BUILTIN_RULES, weights or {}), **kw)
    s.set_models(cards)
    return s


def test_hard_filters_explain_each_exclusion() -> None:
    s = selector(
        card("vision", capabilities={"chat", "vision"}),
        card("plain"),
        card("tools", features={"tools", "streaming"}),
        card("small", context_window=50),
        card("dear", price=("100", "100")),
        card("mystery", price=None),
        card("other", provider="q"),
        card("tagged", tags={"eu"}),
    )
    d = s.rank(ModelRequirements(min_capabilities={"chat"}, required_features={"streaming"},
                                 max_cost_per_1k_tokens="0.01", exclude_providers={"q"}),
               RequestShape(prompt_tokens=60, max_output_tokens=10))
    assert d.excluded == {
        "p/dear": "costs $0.1/1k tokens > $0.01",
        "p/mystery": "price unknown, cannot meet max_cost_per_1k_tokens",
        "q/other": "provider q excluded",
        "p/small": "needs 70 tokens, context window is 50",
    }
    assert {c.card.id for c in d.candidates} == {"p/vision", "p/plain", "p/tools", "p/tagged"}
    d = s.rank(ModelRequirements(required_features={"tools"}, tags={"eu"}))
    assert d.excluded["p/tools"] == "lacks tag eu"
    assert d.excluded["p/tagged"] == "lacks feature tools"
    assert not d.candidates


def test_every_candidate_has_every_rule_score() -> None:
    s = selector(card("a"), card("b", price=("0.1", "0.1"), quality=0.9))
    d = s.rank()
    for c in d.candidates:
        assert set(c.scores) == {r.name for r in BUILTIN_RULES}
        assert 0 <= c.score <= 1
        weights = d.weights
        expected = sum(weights[n] * v for n, v in c.scores.items()) / sum(weights.values())
        assert c.score == pytest.approx(expected)
    assert d.chosen.card.id == "p/b"
    assert "p/a" in d.explain() and "(weights)" in d.explain()
    assert d.reason().startswith("score ")


def test_explain_shows_rule_names_sharing_a_prefix_whole() -> None:
    """Before: the table cut every rule name to 11 characters, so ``latency_p50_weighted`` and
    ``latency_p50_raw`` both read ``latency_p50``; each column is as wide as its name now,
    and every row's figures stay under their names."""
    from squirrel_models import ScoringRule

    plugin = [ScoringRule("latency_p50_weighted", lambda card, req, stats, shape: 0.25, 1.0),
              ScoringRule("latency_p50_raw", lambda card, req, stats, shape: 0.75, 1.0)]
    s = ModelSelector(rules_from([*BUILTIN_RULES, *plugin], {}))
    s.set_models([card("a"), card("b", price=("0.1", "0.1"))])
    lines = s.rank().explain().splitlines()
    head = lines[0]
    assert "latency_p50_weighted" in head and "latency_p50_raw" in head
    names = head.split()
    assert len(names) == len(set(names))
    # each figure ends where its name ends (right-aligned under it)
    for name, figure in (("latency_p50_weighted", "0.250"), ("latency_p50_raw", "0.750")):
        end = head.index(name) + len(name)
        assert all(row[end - len(figure):end] == figure for row in lines[2:4]), (name, lines)


@pytest.mark.parametrize("names", [("a",), ("a", "b", "c")])
def test_reason_counts_the_candidates_without_building_them(names) -> None:
    """The reason line read from the lazy ranking (the gateway's header, on every answer)
    says what it says once every candidate is built: the count, the rank, the scores."""
    s = selector(*(card(n, price=(f"0.{i + 1}", "0.1"), quality=0.5 + i / 10)
                   for i, n in enumerate(names)))
    best = s.rank().chosen.card.id
    last = f"p/{names[0]}" if best != f"p/{names[0]}" else f"p/{names[-1]}"
    for answered in {best, last}:
        lazy, built = s.rank(), s.rank()
        if answered != best:
            lazy, built = lazy._answer(answered, ()), built._answer(answered, ())
        line = lazy.reason()
        # counted, not built (a later candidate that answered is found by building them)
        assert (lazy._candidates is None) == (answered == best)
        assert len(built.candidates) == len(names)
        assert line == built.reason()
        expected = ("the only candidate" if len(names) == 1 and answered == best
                    else f"beat {len(names) - 1} other candidate(s)" if answered == best
                    else f"ranked #{len(names)} of {len(names)}")
        assert expected in line


def test_weights_from_config_change_the_winner() -> None:
    cheap = card("cheap", price=("0.01", "0.01"), quality=0.2)
    good = card("good", price=("10", "10"), quality=1.0)
    assert selector(cheap, good, weights={"quality": 0.0}).select().id == "p/cheap"
    assert selector(cheap, good, weights={"cost": 0.0, "quality": 5}).select().id == "p/good"


def test_unknown_capability_or_feature_is_a_typed_error() -> None:
    s = selector(card("a"))
    with pytest.raises(InvalidRequest, match="unknown feature teleport") as info:
        s.rank(ModelRequirements(required_features={"teleport"}))
    assert info.value.field == "required_features"
    with pytest.raises(InvalidRequest, match="min_capabilities"):
        s.rank(ModelRequirements(min_capabilities={"telepathy"}))


@pytest.mark.parametrize("bad", [{"max_cost_per_1k_tokens": "-1"}, {"max_latency_ms": float("nan")},
                                 {"max_request_cost": "NaN"}, {"max_latency_ms": -5}])
def test_negative_or_nan_ceilings_are_refused(bad) -> None:
    with pytest.raises(InvalidRequest):
        ModelRequirements(**bad)


def test_no_candidate_raises_with_reasons() -> None:
    s = selector(card("a", context_window=10))
    with pytest.raises(CapabilityNotSupported, match="p/a: needs 101 tokens"):
        s.select(shape=RequestShape(prompt_tokens=100))


def test_inexact_count_is_rechecked_before_excluding() -> None:
    """An upper bound that overflows a window is recounted with the model's tokenizer."""
    s = selector(card("a", context_window=100))
    shape = RequestShape(prompt_tokens=500, exact=False, recount=lambda c: 40)
    assert s.select(shape=shape).id == "p/a"


def test_cache_hits_and_invalidation() -> None:
    s = selector(card("a"), card("b"))
    req = ModelRequirements()
    s.rank(req)
    s.rank(req)
    s.rank(ModelRequirements())  # equal requirements hit too
    assert (s.cache_hits, s.cache_misses) == (2, 1)
    s.add(card("c"))
    d = s.rank(req)
    assert not d.cache_hit
    assert {c.card.id for c in d.candidates} == {"p/a", "p/b", "p/c"}
    s.remove("p/a")
    assert {c.card.id for c in s.rank(req).candidates} == {"p/b", "p/c"}


def test_a_busy_local_model_loses_to_an_idle_one() -> None:
    busy = card("busy", provider="local1", price=("0", "0"), latency_ms=100)
    idle = card("idle", provider="local2", price=("0", "0"), latency_ms=100)
    depth = {"local1/busy": 4.0, "local2/idle": 0.0}
    s = selector(busy, idle, live=lambda c: {"queue_depth": depth[c.id]})
    assert s.select().id == "local2/idle"
    depth.update({"local1/busy": 0.0, "local2/idle": 6.0})
    assert s.select().id == "local1/busy"


def test_a_busy_model_loses_before_any_latency_is_known() -> None:
    busy, idle = card("busy", provider="l1", price=("0", "0")), card("idle", provider="l2", price=("0", "0"))
    depth = {"l1/busy": 3.0, "l2/idle": 0.0}
    s = selector(busy, idle, live=lambda c: {"queue_depth": depth[c.id]}, live_provider=lambda p: True)
    assert s.select().id == "l2/idle"


def test_observed_latency_and_reliability_move_the_ranking() -> None:
    stats = StatsRegistry()
    a, b = card("a"), card("b")
    s = selector(a, b, stats=stats)
    assert s.select().id == "p/a"  # tie broken by id
    for _ in range(5):
        stats.started("p/a")
        stats.finished("p/a", ok=False, latency_s=None)
    assert s.select().id == "p/b"
    d = s.rank(ModelRequirements(max_latency_ms=50))
    assert not d.excluded
    stats.started("p/b")
    stats.finished("p/b", ok=True, latency_s=0.2)
    d = s.rank(ModelRequirements(max_latency_ms=50))
    assert d.excluded == {"p/b": "latency 200 ms > 50 ms"}


def test_open_breaker_scores_zero_reliability() -> None:
    s = selector(card("a"), card("b"), breaker_open=lambda mid: mid == "p/a")
    d = s.rank()
    scores = {c.card.id: c.scores["reliability"] for c in d.candidates}
    assert scores == {"p/a": 0.0, "p/b": 1.0}


cards_st = st.lists(st.builds(
    lambda n, price, q, ctx, caps: card(f"m{n}", price=price, quality=q, context_window=ctx,
                                        capabilities=caps),
    st.integers(0, 10_000),
    st.none() | st.tuples(st.sampled_from(["0", "0.1", "1", "10"]), st.sampled_from(["0", "0.2", "2", "20"])),
    st.none() | st.floats(0, 1),
    st.sampled_from([512, 4096, 128_000]),
    st.sampled_from([{"chat"}, {"chat", "vision"}]),
), max_size=30, unique_by=lambda c: c.id)


@given(cards_st, st.randoms(use_true_random=False), st.integers(0, 5000))
@settings(max_examples=80, deadline=None)
def test_selection_is_deterministic(cards, rnd, prompt) -> None:
    """Identical inputs give identical rankings, whatever the registration order."""
    shuffled = list(cards)
    rnd.shuffle(shuffled)
    shape = RequestShape(prompt_tokens=prompt, max_output_tokens=100)
    first = selector(*cards).rank(shape=shape)
    second = selector(*shuffled).rank(shape=shape)
    assert first == second.__class__(second.candidates, second.excluded, second.weights,
                                      second.requirements, first.cache_hit, first.duration_s)
    ranked = [(c.card.id, c.score) for c in first.candidates]
    assert ranked == sorted(ranked, key=lambda x: (-x[1], x[0]))
    assert len(first.candidates) + len(first.excluded) == len(cards)


def test_price_arithmetic_is_exact() -> None:
    price = Price(Decimal("0.15"), Decimal("0.60"), cached_input=Decimal("0.075"))
    from squirrel_models import Usage

    cost = price.cost(Usage(input_tokens=1000, output_tokens=500, cached_tokens=400, reasoning_tokens=300))
    assert cost == (600 * Decimal("0.15") + 400 * Decimal("0.075") + 500 * Decimal("0.60")) / 1_000_000
    assert Price(0.1, 0.2).input == Decimal("0.1")  # a float price is taken as written
