"""Money is computed in the library's own decimal context, never the caller's. Decimal
arithmetic rounds to the current context, which an application may narrow for its own
figures (``decimal.getcontext().prec = 3``): computed in it, costs lost their digits and an
in-memory budget's total stopped growing at 1.00 USD, admitting every request while 70 USD
were spent against a 10 USD limit."""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest, BudgetExceeded, BudgetLimit, ModelCard, Price, Usage
from squirrel_models.budget import charges_for
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.sqlbudget import from_nanos, to_nanos
from squirrel_models.testing import Reply, ScriptedProvider


@pytest.fixture
def narrow() -> Iterator[None]:
    """The caller's context, narrowed as an application may narrow it."""
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.rounding = 3, decimal.ROUND_DOWN
        yield


def test_a_cost_keeps_its_digits(narrow: None) -> None:
    assert Price(Decimal("2.5"), Decimal(10)).cost_of(1234, 567) == Decimal("0.008755")
    assert to_nanos(Decimal("0.001234567")) == 1_234_567
    assert from_nanos(1_234_567) == Decimal("0.001234567")


@pytest.mark.anyio
async def test_a_budget_adds_every_cost_up_to_its_limit(narrow: None) -> None:
    backend = MemoryBudgetBackend()
    charges = charges_for([BudgetLimit("global", limit="10")], provider="p", model_id="p/m",
                          budget_key=None, now=datetime.now(UTC))
    cost, settled = Decimal("0.0035"), 0
    with pytest.raises(BudgetExceeded):
        for _ in range(4000):
            r = await backend.reserve(charges, cost, ttl=60)
            await backend.settle(r, cost)
            settled += 1
    (state,) = await backend.usage(charges)
    assert settled == 2857 and state.committed == Decimal("9.9995")  # 2,857 x 0.0035, exactly


@pytest.mark.anyio
async def test_a_request_is_charged_its_cost(narrow: None, squirrel_manager: Any) -> None:
    card = ModelCard.for_provider("p", "m", provider_type="scripted", price=Price(Decimal("2.5"), 10))
    p = ScriptedProvider("p", [card])
    p.script("m", Reply("ok", usage=Usage(1234, 567)))
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}]}})
    mm.register_model(card, p)
    async with mm:
        response = await mm.complete(AIRequest.from_prompt("hi", max_tokens=600))
        (state,) = await mm.budget_backend.usage(mm.tokens.charges(card, None))
    assert response.cost == state.committed == Decimal("0.008755")
