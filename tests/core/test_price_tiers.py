"""Tiered prices: a prompt above a tier's size is billed, all of it, at that tier's prices
(gpt-5.4 above 272,000 prompt tokens, Gemini and Claude above 200,000). Before, a card had one
price, and the openai plugin's catalogue gave tiered models their base prices: a large prompt
was reserved and charged at half of what was billed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    ConfigError,
    InvalidRequest,
    ModelCard,
    Price,
    PriceTier,
    Usage,
    load_config,
)
from squirrel_models.testing import Reply, ScriptedProvider

GPT54 = Price(Decimal("2.5"), Decimal("15"), Decimal("0.25"),
              tiers=[PriceTier(272_000, Decimal(5), Decimal("22.5"), Decimal("0.5"))])


def test_a_prompt_above_a_tier_is_billed_all_at_its_prices() -> None:
    assert GPT54.cost_of(272_000, 1000) == (272_000 * Decimal("2.5") + 1000 * 15) / 10**6
    assert GPT54.cost_of(272_001, 1000, 100_000) == (
        172_001 * 5 + 100_000 * Decimal("0.5") + 1000 * Decimal("22.5")) / 10**6
    three = Price(1, 2, tiers=[PriceTier(10, 3, 4), PriceTier(20, 5, 6)])
    assert [three.cost_of(n, 1) for n in (10, 11, 20, 21)] == [
        (10 * 1 + 2) / Decimal(10**6), (11 * 3 + 4) / Decimal(10**6),
        (20 * 3 + 4) / Decimal(10**6), (21 * 5 + 6) / Decimal(10**6)]
    # cached_input unset on a tier: the tier's input price
    assert Price(1, 1, 0, tiers=[PriceTier(5, 2, 2)]).cost_of(6, 0, 6) == Decimal(12) / 10**6


RATE = st.integers(0, 50).map(Decimal)


@st.composite
def prices(draw: Any) -> Price:
    base = [draw(RATE), draw(RATE)]
    cached = draw(st.one_of(st.none(), st.integers(0, int(base[0])).map(Decimal)))
    tiers, above, rates = [], 0, base
    for _ in range(draw(st.integers(0, 3))):
        above += draw(st.integers(1, 1000))
        rates = [r + draw(RATE) for r in rates]
        tiers.append(PriceTier(above, *rates))
    return Price(*base, cached, tiers=tiers)


@given(price=prices(), prompt=st.integers(0, 4000), more=st.integers(0, 4000),
       output=st.integers(0, 1000), cached=st.integers(0, 4000))
def test_a_reservation_on_a_prompt_bound_covers_the_prompt(price: Price, prompt: int, more: int,
                                                          output: int, cached: int) -> None:
    """A tier is never cheaper than the one below (refused), so a worst case priced on an upper
    bound of the prompt is at least what the prompt costs, whatever it had cached."""
    assert price.cost_of(prompt + more, output) >= price.cost_of(prompt, output, cached)


@pytest.mark.parametrize(("tiers", "field", "says"), [
    ([{"above": 100, "input": "0.5", "output": "3"}], "tiers[0].input", "cheaper than the 1"),
    ([{"above": 100, "input": "2", "output": "3", "cached_input": "0.05"}], "tiers[0].cached_input",
     "cheaper"),
    ([{"above": 100, "input": "2", "output": "3"}, {"above": 100, "input": "3", "output": "4"}],
     "tiers[1].above", "smallest prompt up"),
    ([{"above": 0, "input": "2", "output": "3"}], "tiers[0].above", "> 0"),
    ([{"above": 100, "input": "2"}], "tiers[0].output", "required"),
    ([{"above": 100, "input": "0.0000025", "output": "3"}], "tiers[0].input", None),
])
def test_bad_tiers_are_refused_naming_the_field(tiers: list[dict[str, Any]], field: str,
                                                says: str | None) -> None:
    price = {"input": "1", "output": "2", "cached_input": "0.1", "tiers": tiers}
    with pytest.raises(ConfigError) as info:
        load_config({"providers": [{"name": "p", "type": "t", "models": [{"name": "m", "price": price}]}]})
    assert f"providers[0].models[0].price.{field}" in str(info.value)
    if says is not None:
        assert says in str(info.value)


def test_tiers_must_be_tiers() -> None:
    with pytest.raises(InvalidRequest, match="tiers"):
        Price(1, 1, tiers=[{"above": 5}])  # type: ignore[list-item]


@pytest.mark.anyio
async def test_a_large_prompt_is_reserved_and_charged_at_its_tier(squirrel_manager: Any) -> None:
    tier = PriceTier(1000, Decimal(10), Decimal(100))
    tiered = ModelCard.for_provider("p", "tiered", provider_type="scripted", context_window=100_000,
                                    price=Price(1, 2, tiers=[tier]))
    p = ScriptedProvider("p", [tiered])
    p.script("tiered", Reply("ok", usage=Usage(3000, 10)), Reply("ok", usage=Usage(500, 10)))
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}]}})
    mm.register_model(tiered, p)
    big = AIRequest.from_prompt("x" * 3000, max_tokens=10)
    async with mm:
        estimate = mm.tokens.estimate(big, tiered)
        assert estimate.prompt.tokens > 1000
        assert estimate.worst_case_cost == (estimate.prompt.tokens * 10 + 10 * 100) / Decimal(10**6)
        large = await mm.complete(big)
        small = await mm.complete(AIRequest.from_prompt("x" * 400, max_tokens=10))
        (state,) = await mm.budget_backend.usage(mm.tokens.charges(tiered, None))
    assert large.cost == Decimal(3000 * 10 + 10 * 100) / 10**6
    assert small.cost == Decimal(500 * 1 + 10 * 2) / 10**6
    assert state.committed == large.cost + small.cost and state.reserved == 0


def test_the_configuration_takes_tiers() -> None:
    config = load_config({"providers": [{"name": "p", "type": "t", "models": [{"name": "m", "price": {
        "input": "2.5", "output": "15", "cached_input": "0.25",
        "tiers": [{"above": 272000, "input": "5", "output": "22.5", "cached_input": "0.5"}]}}]}]})
    assert config.providers[0].models[0].price == GPT54
