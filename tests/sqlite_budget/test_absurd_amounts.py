"""An amount the store cannot hold (issue 12: 1e30 tokens became a raw ValueError and left the
reservation open until its lease expired): a typed error, and the reservation is closed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from squirrel_models import InvalidRequest, ModelCard, Price, SquirrelError
from squirrel_models.budget import BudgetLimit
from squirrel_models.tokens import BudgetStoreFailed, TokenManager
from squirrel_models.types import AIRequest
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

pytestmark = pytest.mark.anyio

CARD = ModelCard.for_provider("p", "m", price=Price("2", "8"))


@pytest.mark.parametrize("amount", ["1e30", "NaN", "-1"])
async def test_the_backend_refuses_with_a_typed_error(tmp_path: Path, amount: str) -> None:
    backend = SqliteBudgetBackend(SqliteBudgetOptions(path=str(tmp_path / "b.sqlite3")))
    tm = TokenManager(lambda *a: None, backend, (BudgetLimit("global", limit=Decimal(5)),))
    est = tm.estimate(AIRequest.from_prompt("hi", max_tokens=10), CARD)
    r = await tm.reserve(CARD, est, budget_key=None, request_id="x")
    assert r is not None
    with pytest.raises(InvalidRequest) as raw:
        await backend.settle(r, Decimal(amount))
    assert isinstance(raw.value, SquirrelError) and raw.value.field == "amount"
    # Through the core, the reservation is closed: committed at what it was allowed.
    with pytest.raises(BudgetStoreFailed):
        await tm.settle(r, CARD, Decimal(amount))
    (u,) = await backend.usage(r.charges)
    audit = await backend.audit()
    await backend.aclose()
    assert audit["open"] == 0 and u.reserved == 0 and u.committed == r.amount
