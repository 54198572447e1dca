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
     "fallback.options.retry.bogus: unknown key"),
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
