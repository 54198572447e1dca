"""The conformance suite of scoring rules: :class:`ScoringRuleConformance`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import attrs

from ...cards import ModelCard, ModelRequirements, Price
from ...scoring import RequestShape, ScoringRule
from ...stats import EMPTY, ModelStats

__all__ = ["ScoringRuleConformance"]


class _Unread:
    """Stands for an argument the rule says it does not read (not in ``uses``)."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(
            f"the rule read {self._what}.{name} but does not list {self._what!r} in ScoringRule.uses: "
            f"its scores are cached per model and requirements, so they go stale")


class ScoringRuleConformance:
    """Checks a scoring rule (:class:`~squirrel_models.ScoringRule`): provide a ``rule``
    fixture returning it. Override :meth:`cards`, :meth:`requirements`, :meth:`stats` or
    :meth:`shapes` to add the inputs your rule cares about (a tag, a feature)."""

    def cards(self) -> list[ModelCard]:
        base = ModelCard.for_provider("p", "m", provider_type="t")
        return [base,
                attrs.evolve(base, price=Price(input="0.15", output="0.60"), quality=0.9, latency_ms=300.0,
                             context_window=128_000, max_output_tokens=16_384, tags=frozenset({"local", "fast"}),
                             features=frozenset({"tools", "streaming"})),
                attrs.evolve(base, price=Price.free(), quality=0.0, latency_ms=20_000.0, context_window=512),
                attrs.evolve(base, price=Price(input="60", output="120"), quality=1.0)]

    def requirements(self) -> list[ModelRequirements]:
        return [ModelRequirements(), ModelRequirements(required_features={"tools"}, max_latency_ms=1000.0,
                                                       max_request_cost="0.01", prefer_tags={"local"})]

    def stats(self) -> list[ModelStats]:
        return [EMPTY, ModelStats(latency_ms=850.0, success_rate=0.4, samples=25, in_flight=3, queue_depth=2.0,
                                  tokens_per_s=40.0, breaker_open=True)]

    def shapes(self) -> list[RequestShape]:
        return [RequestShape(), RequestShape(prompt_tokens=6000, max_output_tokens=2000, exact=False)]

    def _live(self, rule: ScoringRule) -> Iterator[tuple[ModelRequirements, Any, Any]]:
        """(requirements, stats, shape): what the rule says it does not read stands unread."""
        stats: list[Any] = self.stats() if "stats" in rule.uses else [_Unread("stats")]
        shapes: list[Any] = self.shapes() if "request" in rule.uses else [_Unread("request")]
        yield from itertools.product(self.requirements(), stats, shapes)

    def _inputs(self, rule: ScoringRule) -> Iterator[tuple[ModelCard, ModelRequirements, Any, Any]]:
        for card, (req, stats, shape) in itertools.product(self.cards(), self._live(rule)):
            yield card, req, stats, shape

    def test_rule_is_well_formed(self, rule: ScoringRule) -> None:
        assert isinstance(rule, ScoringRule), "register_scoring_rules returns ScoringRule objects"
        assert rule.name and rule.name == rule.name.strip(), "a rule needs a name ([scoring.weights] uses it)"
        assert rule.default_weight >= 0 and math.isfinite(rule.default_weight)
        assert rule.uses <= {"stats", "request"}

    def test_scores_are_numbers_from_0_to_1(self, rule: ScoringRule) -> None:
        """Every score is a number in [0, 1], for priced, free and unpriced cards, with and
        without requirements, stats and a request shape (the core clamps and takes NaN as 0,
        but a score out of range is a bug in the rule: it weighs differently than meant)."""
        for card, req, stats, shape in self._inputs(rule):
            score = rule.fn(card, req, stats, shape)
            assert isinstance(score, int | float) and not isinstance(score, bool), \
                f"{rule.name} returned {type(score).__name__}, not a number, for {card.id}"
            assert 0.0 <= score <= 1.0, f"{rule.name} scored {score!r} (not in [0, 1]) for {card!r}"

    def test_reads_only_what_uses_lists(self, rule: ScoringRule) -> None:
        """A rule whose ``uses`` leaves out ``stats`` (or ``request``) is cached: reading it
        anyway gives scores that go stale. Here such an argument fails when read."""
        for card, req, stats, shape in self._inputs(rule):
            rule.fn(card, req, stats, shape)

    def test_same_inputs_same_score(self, rule: ScoringRule) -> None:
        """Selection is deterministic for the same inputs (invariant 4)."""
        for card, req, stats, shape in self._inputs(rule):
            assert rule.fn(card, req, stats, shape) == rule.fn(card, req, stats, shape), \
                f"{rule.name} scored {card.id} twice differently"

    def test_card_key_holds_what_the_score_depends_on(self, rule: ScoringRule) -> None:
        """With a ``card_key``, cards of the same key score the same (the selector scores one
        per key)."""
        if rule.card_key is None:
            return
        for (a, b), (req, stats, shape) in itertools.product(itertools.combinations(self.cards(), 2),
                                                             self._live(rule)):
            if rule.card_key(a) == rule.card_key(b):
                assert rule.fn(a, req, stats, shape) == rule.fn(b, req, stats, shape), \
                    f"{rule.name}: same card_key, different scores"
