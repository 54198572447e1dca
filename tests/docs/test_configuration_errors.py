"""The error messages docs/configuration.md quotes are the ones the code prints.

Each case is a configuration and the message the page shows for it (line breaks in the page
are spaces here); the test checks both that the page still quotes it and that loading the
configuration raises exactly that ``ConfigError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import ConfigError, ModelManager
from squirrel_models.plugins import PluginManager
from squirrel_models.testing.provider import ScriptedPlugin

PAGE = Path(__file__).parents[2] / "docs" / "configuration.md"
P = [{"name": "local", "type": "scripted", "options": {"models": ["a"]}}]

CASES: list[tuple[dict[str, Any], str]] = [
    ({"providers": P, "timeout": -1}, "timeout: must be a finite number > 0, got -1.0"),
    ({"providers": P + P}, "providers[1].name: duplicate provider name 'local'"),
    ({"providers": P, "fallback": {"options": {"retry": {"bogus": 1}}}},
     "fallback.options.retry.bogus: unknown key; [fallback.options.retry] takes: max_retries, "
     "base_delay, max_delay"),
    ({"providers": P, "fallback": {"strategies": ["retry", "nope"]}},
     "fallback.strategies[1]: unknown strategy 'nope'; available: cheaper, graph, "
     "larger_context, next_candidate, retry"),
    ({"providers": P, "fallback": {"max_attempts": 0}},
     "fallback.max_attempts: must be in 1..100, got 0"),
    ({"providers": P, "budget": {"limits": [{"scope": "global", "period": "week",
                                             "limit": "1"}]}},
     "budget.limits[0].period: expected one of total, day, month, got 'week'"),
    ({"providers": P, "budget": {"limits": [{"scope": "global", "period": "day",
                                             "limit": "-1"}]}},
     "budget.limits[0].limit: must be a finite amount >= 0, got -1"),
    ({"providers": P, "scoring": {"weights": {"nosuch": 1}}},
     "scoring.weights: unknown scoring rule nosuch; available: context, cost, latency, "
     "quality, reliability, tags"),
    ({"providers": P, "scoring": {"spread_margin": 2}},
     "scoring.spread_margin: must be a number in 0..1 (a difference of total scores), got 2.0"),
    ({"providers": P, "rate_limits": {"store": "redys"}},
     "rate_limits.store: unknown rate-limit store 'redys'; installed: memory"),
    ({"providers": P, "rate_limits": {"max_wait": -1}},
     "rate_limits.max_wait: must be a finite number of seconds >= 0, got -1.0"),
    ({"providers": P, "rate_limits": {"lease_ttl": 0}},
     "rate_limits.lease_ttl: must be a finite number of seconds > 0, got 0.0"),
    ({"providers": P, "rate_limits": {"limits": [{"scope": "model:local/a", "rpm": -1}]}},
     "rate_limits.limits[0].rpm: must be a whole number in 0..1,000,000,000,000, got -1"),
    ({"providers": P, "rate_limits": {"limits": [{"scope": "model:local/a", "tpm": 1.5}]}},
     "rate_limits.limits[0].tpm: expected int, got float 1.5"),
    ({"providers": P, "rate_limits": {"limits": [{"scope": "model:p/a"}]}},
     "rate_limits.limits[0].rpm: limit on model:p/a sets none of rpm, tpm and max_concurrent"),
    ({"providers": P, "rate_limits": {"limits": [{"scope": "team", "rpm": 1}]}},
     "rate_limits.limits[0].scope: unknown scope 'team'; use global, provider:<name>, "
     "model:<id>, key:<key> or key:*"),
]


def page_text() -> str:
    return re.sub(r"\s+", " ", PAGE.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("config", "message"), CASES, ids=[m.split(":")[0] for _, m in CASES])
def test_the_documented_message_is_the_one_printed(config: dict[str, Any], message: str) -> None:
    assert message in page_text(), f"docs/configuration.md no longer quotes {message!r}"
    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    with pytest.raises(ConfigError) as info:
        ModelManager(config, plugins=pm)
    assert str(info.value) == message
