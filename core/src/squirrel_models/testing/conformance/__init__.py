"""Conformance suites a provider, budget backend or rate-limit store runs against itself.

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
scoring rule subclasses :class:`ScoringRuleConformance` and provides ``rule``.
"""

from __future__ import annotations

from .budget import BudgetBackendConformance
from .providers import HTTPX_UNCLOSED, PROMPT, WEATHER_TOOL, HTTPProviderConformance, ProviderConformance
from .ratelimit import RateLimitStoreConformance
from .scoring import ScoringRuleConformance

__all__ = ["HTTPX_UNCLOSED", "WEATHER_TOOL", "BudgetBackendConformance", "HTTPProviderConformance",
           "ProviderConformance", "RateLimitStoreConformance", "ScoringRuleConformance"]
