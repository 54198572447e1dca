"""End to end through ModelManager with ``budget.backend = "sqlite"``: refusals, the ledger,
and calendar rollover with frozen clocks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelCard, Price, ServerError
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded, FallbackExhausted
from squirrel_models.testing import Fail, Reply, ScriptedProvider
from squirrel_models_sqlite_budget import SqliteBudgetBackend

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def card(name: str, price: tuple[str, str] = ("1", "2")) -> ModelCard:
    return ModelCard.for_provider("p", name, provider_type="scripted",
                                  features={"streaming", "system_prompt"},
                                  price=Price(Decimal(price[0]), Decimal(price[1])))


def config(db_path: str, *limits: dict[str, str]) -> dict[str, Any]:
    return {"budget": {"backend": "sqlite", "options": {"path": db_path},
                       "limits": list(limits) or [{"scope": "global", "limit": "1"}]},
            # retry first (not the default): a failing model is retried once, then the next
            "fallback": {"strategies": ["retry", "next_candidate"],
                         "options": {"retry": {"base_delay": 0.001}}}}


async def test_requests_are_budgeted_and_ledgered(squirrel_manager: Callable[..., Any],
                                                  db_path: str) -> None:
    p = ScriptedProvider("p", [card("a", ("0.1", "0.1")), card("b", ("1", "1"))])
    p.script("a", Fail(ServerError("boom", status_code=500)), Fail(ServerError("boom", status_code=500)))
    async with squirrel_manager(config(db_path)) as mm:
        assert isinstance(mm.budget_backend, SqliteBudgetBackend)
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
        rows = await mm.budget_backend.rows()
        (u,) = await mm.tokens.check_budget(p.models[1])
    assert resp.model == "p/b"
    assert [(r.model, r.attempt, r.outcome, r.error_type) for r in rows] == [
        ("p/a", 1, "error", "ServerError"), ("p/a", 2, "error", "ServerError"),
        ("p/b", 3, "ok", None)]
    ok = rows[-1]
    assert ok.request_id == rows[0].request_id and ok.provider == "p"
    assert (ok.input_tokens, ok.output_tokens, ok.cost) == (
        resp.usage.input_tokens, resp.usage.output_tokens, resp.cost)
    assert ok.scopes == ("global",) and ok.usage_source == "reported" and ok.latency_s >= 0
    assert ok.at.tzinfo is not None
    assert (u.committed, u.reserved) == (resp.cost, 0)


async def test_budget_refusal_through_the_manager(squirrel_manager: Callable[..., Any],
                                                  db_path: str) -> None:
    p = ScriptedProvider("p", [card("dear", ("100000", "100000"))])
    async with squirrel_manager(config(db_path, {"scope": "global", "limit": "0.5"})) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises((BudgetExceeded, FallbackExhausted)):
            await mm.complete(PROMPT)
        assert p.calls["dear"] == 0
        assert (await mm.budget_backend.audit())["open"] == 0


@pytest.mark.parametrize(("before", "after", "period", "old", "new"), [
    ("2026-11-30T23:59:59.500", "2026-12-01T00:00:00.500", "month", "2026-11", "2026-12"),
    ("2026-11-25T23:59:59.900", "2026-11-26T00:00:00.100", "day", "2026-11-25", "2026-11-26"),
])
async def test_rollover_under_concurrency_loses_nothing(
        squirrel_manager: Callable[..., Any], db_path: str, before: str, after: str,
        period: str, old: str, new: str) -> None:
    now = [datetime.fromisoformat(before).replace(tzinfo=UTC)]
    p = ScriptedProvider("p", [card("m")])
    batch = 15
    p.script("m", *[Reply("slow answer here", delay=0.2)] * batch)
    limits = ({"scope": "global", "period": period, "limit": "1"},
              {"scope": "key:*", "period": period, "limit": "1"})
    async with squirrel_manager(config(db_path, *limits)) as mm:
        mm.tokens.now = lambda: now[0]
        mm.budget_backend.clock = lambda: now[0].timestamp()
        mm.register_model(p.models[0], p)
        costs: dict[str, list[Decimal]] = {old: [], new: []}

        async def ask(bucket: str, i: int) -> None:
            req = AIRequest.from_prompt("hello there " * (i + 1), max_tokens=10,
                                        budget_key=f"team{i % 2}")
            costs[bucket].append((await mm.complete(req)).cost)

        async with anyio.create_task_group() as tg:
            for i in range(batch):
                tg.start_soon(ask, old, i)
            while p.in_flight < batch:  # every old-period request has reserved, none settled
                await anyio.sleep(0.005)
            now[0] = datetime.fromisoformat(after).replace(tzinfo=UTC)  # midnight passes
            for i in range(batch):
                tg.start_soon(ask, new, i)

        b = mm.budget_backend
        for bucket in (old, new):
            (g,) = await b.usage([Charge("global", period, bucket, Decimal(1))])
            keys = await b.usage([Charge(f"key:team{k}", period, bucket, Decimal(1)) for k in (0, 1)])
            assert g.committed == sum(costs[bucket]) > 0  # settled into the period reserved in
            assert g.reserved == 0
            assert sum(k.committed for k in keys) == g.committed
        assert (await b.audit())["open"] == 0
        assert len(await b.rows()) == 2 * batch
