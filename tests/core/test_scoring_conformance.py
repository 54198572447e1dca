"""ScoringRuleConformance: every built-in rule passes it, and a wrong rule fails it (one that
reads the stats it does not list in ``uses``, so its cached scores go stale; one scoring out
of [0, 1]; one that scores the same inputs differently; one whose card_key hides what the
score depends on)."""

from __future__ import annotations

import itertools
import re

import pytest
from squirrel_models import PluginError, ScoringRule
from squirrel_models.scoring import BUILTIN_RULES
from squirrel_models.testing.conformance import ScoringRuleConformance


@pytest.fixture(params=BUILTIN_RULES, ids=[r.name for r in BUILTIN_RULES])
def rule(request: pytest.FixtureRequest) -> ScoringRule:
    return request.param  # type: ignore[no-any-return]


class TestBuiltinRules(ScoringRuleConformance):
    pass


counter = itertools.count()
WRONG = {
    "reads stats it does not use": (ScoringRule("busy", lambda c, r, s, q: 1.0 / (1 + s.in_flight)),
                                    "does not list 'stats' in ScoringRule.uses"),
    "scores out of range": (ScoringRule("big", lambda c, r, s, q: 1.0 + (c.quality or 0)), "not in [0, 1]"),
    "scores by chance": (ScoringRule("coin", lambda c, r, s, q: next(counter) % 2 / 2), "twice differently"),
    "a card_key that hides the price": (
        ScoringRule("cheap", lambda c, r, s, q: 1.0 if c.price is not None else 0.0, uses={"request"},
                    card_key=lambda c: c.provider), "same card_key, different scores"),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_rule_fails_the_suite(wrong: str) -> None:
    rule, says = WRONG[wrong]
    suite = ScoringRuleConformance()
    failures = []
    for name in dir(suite):
        if name.startswith("test_"):
            try:
                getattr(suite, name)(rule)
            except AssertionError as exc:
                failures.append(str(exc))
    assert any(says in f for f in failures), failures


@pytest.mark.parametrize(("uses", "message"), [
    ("stats", "got the string 'stats': write {'stats'}"),  # was frozenset({'s', 't', 'a'}): cached, stale
    ({"shape"}, "unknown 'shape'; it lists what the rule reads of 'stats' and 'request'"),  # the argument's name
])
def test_a_uses_the_selector_does_not_know_is_refused(uses: object, message: str) -> None:
    """Accepted before: a rule reading the stats or the request shape under such a ``uses`` was
    taken for one that reads neither and its scores cached per model."""
    with pytest.raises(PluginError, match=re.escape(message)):
        ScoringRule("mine", lambda c, r, s, q: 0.5, uses=uses)  # type: ignore[arg-type]
    assert ScoringRule("mine", lambda c, r, s, q: 0.5, uses=["request", "stats"]).uses == {"stats", "request"}
