"""FallbackStrategyConformance: every built-in strategy passes it, as its factory makes it
from the defaults and from other options; the suite meets every SquirrelError type. (That it
fails a wrong strategy, one per rule: tests/core/test_conformance_catches.py.)"""

from __future__ import annotations

import pytest
from squirrel_models import errors
from squirrel_models.fallback import FallbackStrategy
from squirrel_models.plugins import PluginManager
from squirrel_models.testing.conformance import FallbackStrategyConformance
from squirrel_models.testing.conformance.fallback import sample_errors

pytestmark = pytest.mark.anyio

BUILTINS = PluginManager().fallback_strategies()
#: Each built-in strategy with its defaults, and the retry strategy with more retries.
MADE = [(name, {}) for name in sorted(BUILTINS)] + [("retry", {"max_retries": 5, "base_delay": 0.0})]


@pytest.fixture(params=MADE, ids=[f"{n}{'-' + str(o) if o else ''}" for n, o in MADE])
def strategy(request: pytest.FixtureRequest) -> FallbackStrategy:
    name, options = request.param
    kind = BUILTINS[name]
    made = kind.factory(kind.options_type(**options) if kind.options_type else options)
    return made


class TestBuiltinStrategies(FallbackStrategyConformance):
    pass


def test_the_builtins_are_all_here() -> None:
    assert {"retry", "graph", "larger_context", "cheaper", "next_candidate"} <= BUILTINS.keys()


def test_the_suite_meets_every_squirrel_error_type() -> None:
    met = {type(e) for e in sample_errors()}
    every = {getattr(errors, n) for n in errors.__all__}
    every = {t for t in every if isinstance(t, type) and issubclass(t, errors.SquirrelError)}
    assert every - met == set()
