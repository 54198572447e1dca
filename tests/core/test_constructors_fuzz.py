"""Every public value a caller builds (a request and its parts, requirements, prices, limits,
model overrides and cards) takes any value in any field and ends built or refused with a
``SquirrelError`` naming the field: never a TypeError or AttributeError from a comparison or
an iteration inside a check (``Message(tool_calls=5)``, ``RateLimit(None, rpm=1)`` and
``ModelOverride("m", context_window="4096")`` raised those)."""

from __future__ import annotations

import inspect
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    BudgetLimit,
    ConfigError,
    ImagePart,
    InvalidRequest,
    Message,
    ModelCard,
    ModelOverride,
    ModelRequirements,
    Price,
    RateLimit,
    ResponseFormat,
    SquirrelError,
    TextPart,
    ToolCall,
    Usage,
)

#: Each class with the arguments of one valid value.
VALID: dict[type, dict[str, Any]] = {
    AIRequest: {"messages": (Message("user", "hi"),)},
    Message: {"role": "user", "content": "hi"},
    TextPart: {"text": "t"},
    ImagePart: {"url": "https://example.test/a.png"},
    ToolCall: {"id": "c1", "name": "f", "arguments": "{}"},
    ResponseFormat: {"type": "json_object"},
    ModelRequirements: {},
    Price: {"input": "1", "output": "2"},
    BudgetLimit: {"scope": "global", "limit": "1"},
    RateLimit: {"scope": "global", "rpm": 1},
    ModelOverride: {"name": "m"},
    ModelCard: {"id": "p/m", "provider": "p", "model": "m"},
    Usage: {"input_tokens": 1, "output_tokens": 1},
}
FIELDS = sorted(((cls, name) for cls in VALID for name in inspect.signature(cls).parameters),
                key=lambda f: (f[0].__name__, f[1]))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.binary(max_size=4),
    st.sampled_from(["", "\x00", "a\ud800", "x" * 5000, "a\nb", "global", "key:*", "+tools", "-chat",
                     math.nan, -math.inf, Decimal("-0"), object()]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner), st.frozensets(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=5)


def test_the_valid_values_build() -> None:
    for cls, kw in VALID.items():
        cls(**kw)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_field_is_built_or_refused_typed(field: tuple[type, str], value: Any) -> None:
    cls, name = field
    try:
        cls(**{**VALID[cls], name: value})
        refused = None
    except SquirrelError as exc:
        refused = exc
    if isinstance(refused, InvalidRequest | ConfigError):
        assert refused.field, repr(refused)  # names what was wrong
    # Usage refuses with a MalformedResponse (what an upstream reported): no field
    assert refused is None or len(str(refused)) < 1000, str(refused)


@pytest.mark.parametrize(("make", "error", "field"), [
    (lambda: Message("assistant", "", tool_calls=5), InvalidRequest, "tool_calls"),
    (lambda: RateLimit(None, rpm=1), ConfigError, "scope"),  # type: ignore[arg-type]
    (lambda: BudgetLimit(5, limit="1"), ConfigError, "scope"),  # type: ignore[arg-type]
    (lambda: ModelOverride("m", context_window="4096"), ConfigError, "context_window"),  # type: ignore[arg-type]
    (lambda: ModelOverride("m", quality="high"), ConfigError, "quality"),  # type: ignore[arg-type]
    (lambda: ModelOverride("m", capabilities=5), ConfigError, "capabilities"),  # type: ignore[arg-type]
    (lambda: ModelCard("p/m", "p", "m", context_window=None), InvalidRequest, "context_window"),  # type: ignore[arg-type]
])
def test_a_value_of_the_wrong_type_names_the_field(make: Any, error: type, field: str) -> None:
    with pytest.raises(error) as info:
        make()
    assert info.value.field == field, str(info.value)
