"""A ModelManager with the SQLite budget, made and used before ``os.fork()``, used in the
child on an event loop of its own (a worker forked from a server that loaded the application
first): the child opens its own connection and worker threads and leases its own slices,
and every request of both processes is in the file once, committed spend equal to the
ledger's costs, nothing left reserved.

Before: the child waited forever for its first budget call (the worker pool it inherited
believed it had idle threads, which stayed in the parent), and with slices it would have
spent the parent's leased room a second time."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest
from squirrel_models.manager import ModelManager
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from tests.support.forked import in_forked_child

REQ = AIRequest.from_prompt("hi", max_tokens=10)


def config(db_path: str, slices: bool) -> dict[str, Any]:
    return {"providers": [{"name": "p", "type": "scripted",
                           "options": {"models": ["a"], "reply": "one two three"},
                           "models": [{"name": "a", "price": {"input": "1000", "output": "1000"}}]}],
            "budget": {"backend": "sqlite", "options": {"path": db_path, "slices": slices},
                       "limits": [{"scope": "global", "limit": "100"}]}}


@pytest.mark.parametrize("slices", [False, True], ids=["plain", "slices"])
def test_a_forked_child_budgets_through_its_own_connection(squirrel_plugins: Any, db_path: str,
                                                          slices: bool) -> None:
    mm = ModelManager(config(db_path, slices), plugins=squirrel_plugins)

    async def requests(n: int, close: bool) -> list[str]:
        texts = [(await mm.complete(REQ)).text for _ in range(n)]
        if close:
            await mm.aclose()
        return texts

    try:
        assert asyncio.run(requests(2, False)) == ["one two three"] * 2  # opened, sliced
        kind, texts = in_forked_child(lambda: asyncio.run(requests(3, True)))
        assert (kind, texts) == ("returned", ["one two three"] * 3)
        assert asyncio.run(requests(1, False)) == ["one two three"]  # the parent's works on
    finally:
        asyncio.run(mm.aclose())

    async def audit() -> tuple[Any, list[Any]]:
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=db_path))
        try:
            card = mm.models["p/a"]
            (usage,) = await backend.usage(mm.tokens.charges(card, None))
            return usage, await backend.rows()
        finally:
            await backend.aclose()

    usage, rows = asyncio.run(audit())
    requests_ok = [r for r in rows if r.outcome == "ok"]
    assert len(requests_ok) == 6 and len({r.request_id for r in requests_ok}) == 6
    assert usage.reserved == 0
    assert usage.committed == sum((r.cost for r in rows), Decimal(0)) > 0
