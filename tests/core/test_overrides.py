"""``[[providers.models]]`` overrides: set fields replace the card's set, or edit it when every
entry is signed (``features = ["+tools", "-streaming"]``)."""

from __future__ import annotations

import pytest
from squirrel_models import ConfigError, ModelManager, ModelOverride, ModelRequirements, load_config
from squirrel_models.types import ModelCard

pytestmark = pytest.mark.anyio

CARD = ModelCard.for_provider("p", "m", features={"streaming", "system_prompt"}, capabilities={"chat"},
                              tags={"fast"})


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("features", {"+tools"}, {"streaming", "system_prompt", "tools"}),
    ("features", {"-streaming"}, {"system_prompt"}),
    ("features", {"+tools", "-streaming", "+json_mode"}, {"system_prompt", "tools", "json_mode"}),
    ("features", {"-logprobs"}, {"streaming", "system_prompt"}),  # removing what is absent is fine
    ("features", {"tools"}, {"tools"}),  # plain names: the explicit full replacement
    ("features", set(), set()),  # an empty list replaces too: no features at all
    ("capabilities", {"+vision"}, {"chat", "vision"}),
    ("capabilities", {"completion"}, {"completion"}),
    ("tags", {"+local", "-fast"}, {"local"}),
])
def test_set_fields_edit_or_replace(field: str, value: set[str], expected: set[str]) -> None:
    card = ModelOverride("m", **{field: frozenset(value)}).apply(CARD)
    assert getattr(card, field) == expected
    others = {"features", "capabilities", "tags"} - {field}
    assert all(getattr(card, f) == getattr(CARD, f) for f in others)


@pytest.mark.parametrize(("features", "message"), [
    (["+tools", "streaming"], "mixes signed entries"),
    (["+tools", "-tools"], "both adds and removes tools"),
    (["+"], "must be followed by a name"),
    (["- "], "must be followed by a name"),
])
def test_bad_edits_name_the_field(features: list[str], message: str) -> None:
    data = {"providers": [{"name": "a", "type": "scripted", "models": [{"name": "m", "features": features}]}]}
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.field == "providers[0].models[0].features"
    assert message in str(info.value)


async def test_adding_a_feature_keeps_the_defaults_for_selection(squirrel_plugins) -> None:
    """The README's own example: a model given ``+tools`` still streams, so
    ``required_features={"streaming"}`` keeps it (a plain ``["tools"]`` used to drop it)."""
    config = {"providers": [{"name": "p", "type": "scripted", "options": {"models": ["m", "n"]},
                             "models": [{"name": "m", "features": ["+tools"]},
                                        {"name": "n", "features": ["-streaming"]}]}],
              "budget": {"allow_unpriced": True}}  # the scripted models have no price
    async with ModelManager(config, plugins=squirrel_plugins) as mm:
        assert mm.models["p/m"].features == {"streaming", "system_prompt", "tools"}
        streaming = mm.rank(ModelRequirements(required_features={"streaming"}))
        assert [c.model_id for c in streaming.candidates] == ["p/m"]
        tools = mm.rank(ModelRequirements(required_features={"tools", "streaming"}))
        assert [c.model_id for c in tools.candidates] == ["p/m"]


def test_a_smaller_window_bounds_the_output_limit() -> None:
    card = ModelCard.for_provider("p", "m", context_window=128_000, max_output_tokens=16_384)
    assert ModelOverride("m", context_window=2048).apply(card).max_output_tokens == 2048
    assert ModelOverride("m", context_window=64_000).apply(card).max_output_tokens == 16_384
    assert ModelOverride("m", context_window=2048, max_output_tokens=512).apply(card).max_output_tokens == 512
