"""Usage reports over ledger rows (what ``squirrel usage`` prints)."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from squirrel_models import AIRequest, LedgerRow, ServerError
from squirrel_models.ledger import render, summarize
from squirrel_models.slices import slice_charge_row as charge_row
from squirrel_models.testing import Fail

from .helpers import card, provider

T = datetime(2026, 11, 26, 12, tzinfo=UTC)


def rows() -> list[LedgerRow]:
    return [
        LedgerRow("r1", 1, "p", "p/a", "error", cost=Decimal(0), error_type="ServerError", at=T, scopes=("global",)),
        LedgerRow("r1", 2, "p", "p/b", "ok", 10, 5, cost=Decimal("0.002"), at=T, scopes=("global",)),
        LedgerRow("r2", 1, "p", "p/b", "ok", 20, 5, cost=Decimal("0.003"), at=T, scopes=("global", "key:t")),
        LedgerRow("r3", 1, "q", "q/x", "ok", 1, 1, cost=None, at=T),
    ]


def test_summary_by_model() -> None:
    s = {r["group"]: r for r in summarize(rows(), "model")}
    assert s["p/b"]["requests"] == 2
    assert s["p/b"]["cost_usd"] == Decimal("0.005")
    assert s["p/b"]["cost_per_request"] == Decimal("0.0025")
    assert s["p/a"]["error_rate"] == 1.0
    assert s["p/a"]["fallbacks"] == 1
    assert s["q/x"]["unpriced_attempts"] == 1  # unknown, not $0
    assert s["p/a"]["unpriced_attempts"] == 0  # a failed attempt on a priced model cost $0


@pytest.mark.parametrize("by", ["model", "provider", "scope", "day"])
def test_an_expired_slice_charged_in_full_is_money_not_a_request(by) -> None:
    """The row of an expired budget slice (request id ``slice:<lease>``, outcome ``charged``)
    counts in the cost of its groups, not as a request: it was counted as one, so ``squirrel
    usage`` showed one request more than were made, and a lower cost per request."""
    charged = charge_row("lease-1", 500_000_000, ("global",), T.timestamp())  # nano-USD
    before = {r["group"]: r for r in summarize(rows(), by)}
    after = {r["group"]: r for r in summarize([*rows(), charged], by)}
    assert sum(g["requests"] for g in after.values()) == sum(g["requests"] for g in before.values())
    assert sum(g["attempts"] for g in after.values()) == sum(g["attempts"] for g in before.values())
    assert (sum(g["cost_usd"] for g in after.values())
            == sum(g["cost_usd"] for g in before.values()) + Decimal("0.5"))
    if by in ("scope", "day"):  # shares its group with requests: their cost per request
        group = "global" if by == "scope" else "2026-11-26"
        assert after[group]["requests"] == before[group]["requests"]
        assert after[group]["cost_per_request"] > before[group]["cost_per_request"]


@pytest.mark.parametrize("by", ["provider", "scope", "day"])
def test_summary_groupings(by) -> None:
    groups = {r["group"] for r in summarize(rows(), by)}
    assert groups == {"provider": {"p", "q"}, "scope": {"global", "key:t", "(none)"},
                      "day": {"2026-11-26"}}[by]


def test_render_formats() -> None:
    summary = summarize(rows(), "model")
    assert "p/b" in render(summary, "table")
    data = json.loads(render(summary, "json"))
    assert data[0]["group"] == "p/b"
    parsed = list(csv.DictReader(io.StringIO(render(summary, "csv"))))
    assert parsed[0]["cost_usd"] == "0.005"
    with pytest.raises(ValueError, match="unknown format"):
        render(summary, "xml")


def test_the_table_shows_every_digit_of_a_cost() -> None:
    """A cheap model's request ($0.0000004, gpt-4o-mini's price for a few tokens) showed as
    0.000000 in ``squirrel usage``, as if free, and $0.0000175 as 0.000018 beside
    ``squirrel budget``'s $0.0000175."""
    cheap = [LedgerRow("r1", 1, "p", "p/a", "ok", 2, 0, cost=Decimal("0.0000004"), at=T),
             LedgerRow("r2", 1, "p", "p/b", "ok", 26, 3, cost=Decimal("0.0000175"), at=T),
             LedgerRow("r3", 1, "p", "p/b", "ok", 26, 3, cost=Decimal("0.0000175"), at=T),
             LedgerRow("r4", 1, "p", "p/b", "ok", 26, 3, cost=Decimal("0.0000175"), at=T)]
    table = {line.split()[0]: line.split() for line in render(summarize(cheap, "model")).splitlines()}
    cost, per_request = table["group"].index("cost_usd"), table["group"].index("cost_per_request")
    assert (table["p/a"][cost], table["p/a"][per_request]) == ("$0.0000004", "$0.0000004")
    assert (table["p/b"][cost], table["p/b"][per_request]) == ("$0.0000525", "$0.0000175")
    free = [LedgerRow("r1", 1, "p", "p/a", "ok", 2, 0, cost=Decimal(0), at=T),
            LedgerRow("r2", 1, "p", "p/a", "ok", 2, 0, cost=Decimal("0.00"), at=T),
            LedgerRow("r3", 1, "p", "p/a", "ok", 2, 0, cost=Decimal("0.0000001"), at=T)]
    (row,) = render(summarize(free, "model")).splitlines()[1:]
    assert row.split()[-3] == "$0.0000001" and row.split()[-1] == "$0.0000000333"  # a third


@pytest.mark.anyio
async def test_manager_writes_one_row_per_attempt(squirrel_manager) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b"))
    p.script("a", Fail(ServerError("x", status_code=500)), Fail(ServerError("x", status_code=500)))
    cfg = {"fallback": {"strategies": ["retry", "next_candidate"],  # a retried, then b
                        "options": {"retry": {"base_delay": 0.001}}}}
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        r = await mm.complete(AIRequest.from_prompt("hi", budget_key="team"))
        got = await mm.budget_backend.rows()
    assert [(x.attempt, x.model, x.outcome, x.cost) for x in got] == [
        (1, "p/a", "error", Decimal(0)), (2, "p/a", "error", Decimal(0)), (3, "p/b", "ok", r.cost)]
    assert {x.request_id for x in got} == {r.request_id}


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(3))
async def test_memory_backend_summarize_is_the_reference(seed: int) -> None:
    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

    from tests.support import ledger_summaries

    await ledger_summaries.assert_summaries_match(MemoryBudgetBackend(), seed)


def test_summarize_refuses_an_unknown_grouping_even_without_rows() -> None:
    with pytest.raises(ValueError, match="cannot group by"):
        summarize([], "week")



@pytest.mark.anyio
async def test_rows_recorded_unbuilt_read_as_the_rows_they_stand_for(squirrel_manager) -> None:
    """The memory backend takes a request's rows unbuilt (record_pending) and builds them when
    read: the rows read are those the manager would have built, in order, with the time of
    each attempt; pruning and summaries see them too."""
    from datetime import UTC, datetime, timedelta

    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
    from squirrel_models.ledger import summarize as reference

    p = provider("p", card("a", price=("0.1", "0.1")), card("b"))
    p.script("a", Fail(ServerError("x", status_code=500)))
    backend = MemoryBudgetBackend(max_ledger_rows=3)
    async with squirrel_manager(None, budget_backend=backend) as mm:
        assert mm._record_pending is not None
        for c in p.models:
            mm.register_model(c, p)
        before = datetime.now(UTC)
        first = await mm.complete(AIRequest.from_prompt("hi"))
        second = await mm.complete(AIRequest.from_prompt("hi again"))
        after = datetime.now(UTC)
        got = await backend.rows()
        # Three rows kept of three attempts (a failed, b answered; then one answered).
        assert [(x.request_id, x.attempt, x.model, x.outcome, x.cost, x.error_type)
                for x in got] == [
            (first.request_id, 1, "p/a", "error", Decimal(0), "ServerError"),
            (first.request_id, 2, "p/b", "ok", first.cost, None),
            (second.request_id, 1, second.model, "ok", second.cost, None)]
        assert all(before <= x.at <= after and x.at.tzinfo is UTC for x in got)
        assert (got[1].input_tokens, got[1].output_tokens) == (
            first.usage.input_tokens, first.usage.output_tokens)
        assert await backend.rows() == got  # built once, read again alike
        assert await backend.summarize("model") == reference(got, "model")
        third = await mm.complete(AIRequest.from_prompt("and again"))
        got = await backend.rows()  # the oldest row goes first
        assert [(x.request_id, x.attempt) for x in got] == [
            (first.request_id, 2), (second.request_id, 1), (third.request_id, 1)]
        assert await backend.prune(after + timedelta(days=1)) == 3
        assert await backend.rows() == []


@pytest.mark.anyio
async def test_rows_recorded_unbuilt_and_built_keep_their_order_and_bound() -> None:
    """Rows handed unbuilt and rows recorded built (record, settle with a row) come back in
    the order they were recorded, the newest max_ledger_rows of them, however they mix."""
    from squirrel_models.budget import pending_row
    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

    def unbuilt(rid: str) -> tuple:
        return (rid, 1, "p", "p/a", "ok", 3, 4, 1, 2, Decimal("0.5"), None, 0.25, ("global",),
                T.timestamp() + 1, "counted")

    built = rows()
    b = MemoryBudgetBackend(max_ledger_rows=4)
    await b.record(built[:2])
    b.record_pending([unbuilt("u1"), unbuilt("u2")])
    await b.record(built[2:3])  # after rows not built yet
    assert await b.rows() == [*built[1:2], pending_row(unbuilt("u1")), pending_row(unbuilt("u2")),
                              built[2]]
    b.record_pending([unbuilt("u3")])  # after rows built at the read: the oldest goes
    await b.record(built[3:])
    got = await b.rows()
    assert got == [pending_row(unbuilt("u2")), built[2], pending_row(unbuilt("u3")), built[3]]
    assert got[2].at == datetime.fromtimestamp(T.timestamp() + 1, UTC)
    assert (got[2].usage_source, got[2].scopes, got[2].cost) == ("counted", ("global",), Decimal("0.5"))
    b.record_pending([unbuilt(f"v{i}") for i in range(6)])  # more than the bound, unbuilt
    assert [r.request_id for r in await b.rows()] == ["v2", "v3", "v4", "v5"]
    none = MemoryBudgetBackend(max_ledger_rows=0)
    none.record_pending([unbuilt("x")])
    await none.record(built)
    assert await none.rows() == []


@pytest.mark.anyio
async def test_rows_kept_unbuilt_cost_the_garbage_collector_nothing() -> None:
    """A kept row is no object the garbage collector tracks or counts: each request's row
    left behind (a tuple holding the model card and the Usage) kept the young generation's
    collections busy, several times as often and as long under load (issue 16)."""
    import gc

    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

    b = MemoryBudgetBackend(max_ledger_rows=10_000)
    tracked = len(gc.get_objects())
    was = gc.isenabled()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for i in range(2_000):
            # Values as the manager's are: made per request, a Decimal cost, a float time.
            row = [(f"r{i}", 1, "p", "p/a", "ok", i, 2 * i, 0, 0, Decimal(i) / 7, None,
                    i / 3, ("global",), 1e9 + i, "reported")]
            b.record_pending(row)
            del row
        grown = gc.get_count()[0] - before
    finally:
        if was:
            gc.enable()
    assert grown < 20, f"{grown} objects the collector counts were left by 2,000 rows"
    gc.collect()
    assert len(gc.get_objects()) - tracked < 20
    assert len(await b.rows()) == 2_000


def test_request_ids_are_unique_32_hex_digits() -> None:
    from squirrel_models.attempt import new_request_id

    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_request_ids_of_a_forked_child_are_its_own() -> None:
    """Ids are a per-process random prefix and a count: a forked child draws a prefix of its
    own, else it would repeat its parent's next ids in a shared ledger."""
    from squirrel_models.attempt import new_request_id

    parent = new_request_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out at once
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child[:16] != parent[:16]
    assert child != new_request_id()
