"""Conformance suites a provider, budget backend, rate-limit store, scoring rule, fallback
strategy or token counter runs against itself.

Subclass in your tests and provide the fixtures::

    from squirrel_models.testing.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
        @pytest.fixture
        async def provider(self):          # a started provider instance
            p = MyProvider(...)
            yield p
            await p.aclose()

        @pytest.fixture
        def secrets(self):                 # strings that must never leak (optional)
            return ["sk-canary"]

The tests run on every anyio backend your test session enables. A budget backend subclasses
:class:`BudgetBackendConformance` and provides ``backend``; a rate-limit store subclasses
:class:`RateLimitStoreConformance` and provides ``store`` (a fresh, empty store each time); a
scoring rule subclasses :class:`ScoringRuleConformance` and provides ``rule``; a fallback
strategy subclasses :class:`FallbackStrategyConformance` and provides ``strategy``; a
``count_tokens`` plugin subclasses :class:`TokenCounterConformance` and provides ``counter``
(the plugin), ``card`` (a model it counts for) and, if it reads it, ``provider``.
"""

from __future__ import annotations

from .budget import BudgetBackendConformance
from .fallback import FallbackStrategyConformance
from .providers import HTTPX_UNCLOSED, PROMPT, WEATHER_TOOL, HTTPProviderConformance, ProviderConformance
from .ratelimit import RateLimitStoreConformance
from .scoring import ScoringRuleConformance
from .tokens import TokenCounterConformance

__all__ = ["HTTPX_UNCLOSED", "WEATHER_TOOL", "BudgetBackendConformance", "FallbackStrategyConformance",
           "HTTPProviderConformance", "ProviderConformance", "RateLimitStoreConformance", "ScoringRuleConformance",
           "TokenCounterConformance"]
