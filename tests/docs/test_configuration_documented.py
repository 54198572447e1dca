"""docs/configuration.md lists every field of the configuration classes with its real default,
so the reference cannot drift from ``squirrel_models.config``."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from squirrel_models.budget import BudgetLimit
from squirrel_models.builtins.fallback import Retry
from squirrel_models.config import BudgetConfig, Config, FallbackConfig, ProviderConfig, ScoringConfig
from squirrel_models.fallback import BreakerConfig
from squirrel_models.providers import ModelOverride
from squirrel_models.ratelimit import RateLimit, RateLimitConfig
from squirrel_models.telemetry import TelemetryConfig
from squirrel_models.types import ModelRequirements, Price, PriceTier

CONFIGURATION_MD = Path(__file__).parents[2] / "docs" / "configuration.md"
HEADING = re.compile(r"^#{2,3} .*$", re.MULTILINE)
ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", re.MULTILINE)

#: class -> the class whose section documents it (Retry's options sit in [fallback]).
CLASSES: dict[type, str] = {
    Config: "Config", ProviderConfig: "ProviderConfig", ModelOverride: "ModelOverride",
    Price: "Price", PriceTier: "PriceTier", BudgetConfig: "BudgetConfig", BudgetLimit: "BudgetLimit",
    FallbackConfig: "FallbackConfig", Retry: "FallbackConfig", BreakerConfig: "BreakerConfig",
    ScoringConfig: "ScoringConfig", ModelRequirements: "ModelRequirements",
    TelemetryConfig: "TelemetryConfig", RateLimitConfig: "RateLimitConfig", RateLimit: "RateLimit",
}
UNDOCUMENTED = {(Retry, "name")}  # the strategy's registered name, not an option


def section(class_name: str) -> str:
    text = CONFIGURATION_MD.read_text(encoding="utf-8")
    marks = list(HEADING.finditer(text))
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        if m.group(0).endswith(f"`{class_name}`"):
            return text[m.end():nxt.start() if nxt else len(text)]
    raise AssertionError(f"docs/configuration.md has no heading ending in `{class_name}`")


def documented(cls: type) -> dict[str, str]:
    return {name: default.strip() for name, default in ROW.findall(section(CLASSES[cls]))}


def toml(value: Any) -> str | None:
    """The default as the reference writes it, or None when it is not a plain value."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int | float | Decimal):
        return f"`{value}`"
    if isinstance(value, dict):
        return "`{}`" if not value else None
    if isinstance(value, tuple | frozenset):
        return "`" + json.dumps(sorted(value) if isinstance(value, frozenset) else list(value)) + "`"
    return None


def expected_default(field: attrs.Attribute[Any]) -> str | None:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        value = default.factory()  # type: ignore[call-arg]
        return "see below" if attrs.has(type(value)) else toml(value)
    return toml(default)


PAIRS = [(cls, f) for cls in CLASSES for f in attrs.fields(cls) if (cls, f.name) not in UNDOCUMENTED]


@pytest.mark.parametrize(("cls", "field"), PAIRS, ids=[f"{c.__name__}.{f.name}" for c, f in PAIRS])
def test_every_field_is_documented_with_its_default(cls: type, field: attrs.Attribute[Any]) -> None:
    rows = documented(cls)
    assert field.name in rows, f"{cls.__name__}.{field.name} is missing from docs/configuration.md"
    want = expected_default(field)
    if want is not None:
        assert rows[field.name] == want, f"{cls.__name__}.{field.name}: default is {want}"


def test_no_documented_field_that_does_not_exist() -> None:
    for cls, name in CLASSES.items():
        real = {f.name for c, n in CLASSES.items() if n == name for f in attrs.fields(c)}
        stale = set(documented(cls)) - real
        assert not stale, f"the {name} section documents fields that are gone: {sorted(stale)}"
