"""Attack on DESIGN's "Metrics": through every way a request ends (success, fallback, a
refusal, a budget refusal, a charged failure, streams read, broken and left, a caller's
cancellation), the instruments an in-memory OpenTelemetry reader collects say what the
ledger says: the cost histogram sums to the ledger's costs, the token histogram to its
tokens, the attempt counter counts its rows, unpriced requests are counted, never $0."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    BudgetExceeded,
    MalformedResponse,
    MidStreamError,
    ModelRequirements,
    ServerError,
    SquirrelError,
    Usage,
)
from squirrel_models.testing import Fail, Hang, Reply, StreamReply

from ..support import secret_scanner
from ..support.cut import cut_when
from .helpers import card, provider

pytestmark = pytest.mark.anyio

CONFIG = {"budget": {"limits": [{"scope": "global", "limit": "1000"}]},
          "fallback": {"strategies": ["next_candidate"]}, "timeout": 5}


def prompt(**kw: Any) -> AIRequest:
    return AIRequest.from_prompt("tell me about squirrels", max_tokens=40, budget_key="team", **kw)


async def read_stream(mm: Any, *, leave_after: int | None = None) -> None:
    async with mm.stream(prompt()) as s:
        n = 0
        async for _ in s:
            n += 1
            if leave_after is not None and n >= leave_after:
                break


async def cancelled(mm: Any) -> None:
    """Left once a provider is answering (after a fixed 0.05 s, a loaded machine could still
    be reserving: no attempt, no ledger row)."""
    providers = list(mm.providers.values())
    assert await cut_when(lambda: any(sum(p.calls.values()) for p in providers),
                          lambda: mm.complete(prompt()))


SCENARIOS: dict[str, tuple[Any, ...]] = {
    "answered": (Reply("a b c d"),),
    "fallback": (Fail(ServerError("down", status_code=500)),),
    "charged_malformed": (Fail(MalformedResponse("no choices", usage=Usage(7, 9))),),
    "stream_read": (StreamReply(["a ", "b ", "c"]),),
    "stream_broken": (StreamReply(["a ", "b ", "c ", "d"], fail_after=2),),
    "stream_broken_before_first": (StreamReply(["a ", "b "], fail_after=0),),
    "stream_left": (StreamReply(["a ", "b ", "c ", "d"]),),
    "cancelled": (Hang(),),
}


async def play(mm: Any, name: str) -> None:
    if name.startswith("stream"):
        try:
            await read_stream(mm, leave_after=1 if name == "stream_left" else None)
        except MidStreamError:
            pass
    elif name == "cancelled":
        await cancelled(mm)
    else:
        await mm.complete(prompt())


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_metrics_sum_to_the_ledger(squirrel_manager, squirrel_metrics, name) -> None:
    a, b = card("a", price=("0.5", "1.5")), card("b", price=("2", "3"))
    p = provider("p", a, b)
    p.script("a", *SCENARIOS[name])
    async with squirrel_manager(CONFIG) as mm:
        for c in p.models:
            mm.register_model(c, p)
        await play(mm, name)
        rows = await mm.budget_backend.rows()
        spent = (await mm.tokens.check_budget(a, "team"))[0]
    assert rows, name
    m = squirrel_metrics
    ledger_cost = sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    assert ledger_cost == spent.committed  # the ledger is the budget's spend
    assert m.total("squirrel.request.cost") == pytest.approx(float(ledger_cost), abs=1e-12), name
    # Tokens the provider used (reported, counted or estimated from what was received), not
    # charge_unanswered's assumption (rows marked cut): the GenAI conventions' token usage
    used = [r for r in rows if r.usage_source != "cut"]
    assert m.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == sum(
        r.input_tokens for r in used), name
    assert m.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == sum(
        r.output_tokens for r in used), name
    assert m.total("squirrel.fallback.attempts") == len(rows), name
    for outcome in ("ok", "error"):
        assert m.total("squirrel.fallback.attempts", outcome=outcome) == sum(
            r.outcome == outcome for r in rows), name
    durations = m.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == len(rows), name


async def test_refusals_are_counted_and_cost_nothing(squirrel_manager, squirrel_metrics) -> None:
    """A budget refusal and an unpriced model's refusal: no cost recorded, the refusal
    counted by outcome, the budget's utilization never above what the store holds."""
    a = card("a", price=("1", "1"))
    free = card("free", price=None)
    p = provider("p", a, free)
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "0.000001"}]}, "timeout": 5}
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        with pytest.raises(BudgetExceeded):
            await mm.complete(prompt(), ModelRequirements(models=["p/a"]))
        with pytest.raises(SquirrelError):
            await mm.complete(prompt(), ModelRequirements(models=["p/free"]))
        rows = await mm.budget_backend.rows()
    m = squirrel_metrics
    assert m.total("squirrel.request.cost") == 0
    assert all(r.cost in (None, Decimal(0)) for r in rows)
    assert not [p for p in m.points("gen_ai.client.operation.duration")
                if p.attributes.get("gen_ai.request.model") == "p/a"]
    assert p.calls == {}  # nothing reached the upstream


async def test_token_usage_keeps_large_prompts_apart(squirrel_manager, squirrel_metrics) -> None:
    """gen_ai.client.token.usage has the buckets the GenAI conventions give it (1, 4, 16 ...
    67108864): with the SDK's default ones (up to 10,000) every prompt of a long-context
    model fell in one overflow bucket."""
    a = card("a", price=("1", "1"), context_window=1_000_000)
    p = provider("p", a)
    p.script("a", Reply("ok", usage=Usage(200_000, 3)))
    async with squirrel_manager({"timeout": 5}) as mm:
        mm.register_model(a, p)
        await mm.complete(prompt())
    (point,) = [x for x in squirrel_metrics.points("gen_ai.client.token.usage")
                if x.attributes["gen_ai.token.type"] == "input"]
    assert list(point.explicit_bounds) == [4.0 ** i for i in range(14)]
    assert point.bucket_counts[list(point.explicit_bounds).index(262144)] == 1


def test_instrument_names_and_units() -> None:
    """The GenAI semantic conventions' names and units, and the project's under squirrel."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from squirrel_models.metrics import Metrics

    reader = InMemoryMetricReader()
    mx = Metrics(MeterProvider(metric_readers=[reader]))
    mx.attempt(model="m", provider="p", outcome="ok", error=None, usage=Usage(1, 2), duration=0.5)
    mx.selection(0.001, True)
    mx.selection(0.001, False)
    mx.request_cost(Decimal("0.5"), model="m", provider="p")
    mx.request_cost(None, model="m", provider="p")
    mx.budget("key:alice", "day", 0.5)
    units = {m.name: m.unit for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert units["gen_ai.client.operation.duration"] == "s"
    assert units["gen_ai.client.token.usage"] == "{token}"
    assert units["squirrel.selection.duration"] == "s"
    assert units["squirrel.request.cost"] == "USD"
    assert units["squirrel.budget.utilization"] == "1"
    assert {"squirrel.selection.cache.hits", "squirrel.selection.cache.misses",
            "squirrel.fallback.attempts", "squirrel.unpriced.requests"} <= set(units)


async def test_labels_stay_bounded_under_many_callers(squirrel_manager, squirrel_metrics) -> None:
    """200 callers with their own budget keys (user ids, an e-mail, a key-shaped string),
    streams and answers, some failing: every instrument keeps the same few series, and no
    caller's key reaches a label."""
    a, b = card("a", price=("1", "1")), card("b", price=("1", "1"))
    p = provider("p", a, b)
    p.failing["a"] = 503
    cfg = {"budget": {"limits": [{"scope": "key:*", "limit": "10"},
                                 {"scope": "global", "limit": "100"}]},
           "fallback": {"strategies": ["next_candidate"]}, "timeout": 5}
    keys = [f"user-{i}" for i in range(197)] + ["eve@example.com", "sk-proj-" + "x7" * 20,
                                                "'; DROP TABLE ledger; --"]

    def series() -> set[tuple[str, frozenset[Any]]]:
        data = squirrel_metrics.reader.get_metrics_data()
        return {(m.name, frozenset(dict(x.attributes or {}).items()))
                for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics for x in m.data.data_points}

    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        counts = []
        for i, key in enumerate(keys):
            req = AIRequest.from_prompt("hello", max_tokens=5, budget_key=key)
            if i % 2:
                await mm.complete(req)
            else:
                async with mm.stream(req) as s:
                    async for _ in s:
                        pass
            if i in (9, len(keys) - 1):
                counts.append(len(series()))
    assert counts[0] == counts[1]
    text = squirrel_metrics.everything()
    for key in keys:
        assert key not in text


def _bucket_width(point: Any, value: float) -> float:
    """How many times wider than its lower bound the bucket holding ``value`` is (inf: the
    first bucket from 0, or the overflow one)."""
    bounds = [0.0, *point.explicit_bounds, float("inf")]
    for low, high in itertools.pairwise(bounds):
        if low < value <= high:
            return high / low if low > 0 else float("inf")
    return float("inf")


async def test_every_histogram_resolves_its_usual_values(squirrel_manager, squirrel_metrics) -> None:
    """A cheap request's cost ($0.00004), a utilization of a half, an attempt's milliseconds
    and its tokens each fall in a bucket at most 10 times as wide as its lower bound: with
    the SDK's default buckets (0, 5, 10 ... 10,000) every cost and utilization fell in the one
    bucket (0, 5], and the histograms said nothing but their sums."""
    a = card("a", price=("1", "2"))
    p = provider("p", a)
    p.script("a", Reply("a b c d e f g h i j k l m n o p q r s t"))
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "0.0001"}]}, "timeout": 5}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(a, p)
        r = await mm.complete(prompt())
    m = squirrel_metrics
    (cost,) = m.points("squirrel.request.cost")
    assert _bucket_width(cost, float(r.cost)) <= 10
    (util,) = m.points("squirrel.budget.utilization")
    assert _bucket_width(util, util.sum) <= 10 and 0.3 < util.sum < 0.9
    (duration,) = m.points("gen_ai.client.operation.duration")
    assert _bucket_width(duration, duration.sum) <= 10
    for tokens in m.points("gen_ai.client.token.usage"):
        assert _bucket_width(tokens, tokens.sum) <= 10


async def test_exemplars_carry_no_secret(squirrel_plugins) -> None:
    """Exemplars keep the attributes a view drops (``filtered_attributes``): a model id that
    carries a provider's key (a Secret), dropped by a view and sampled by an always-on
    exemplar filter, reaches them masked, as the labels do."""
    from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import View
    from squirrel_models import ModelManager
    from squirrel_models.secrets import Secret

    key = secret_scanner.canary("zq-exemplar-Qm7r2XvL9pT4wZ8nB3kD6fH1")
    held = Secret(key)  # as a provider holds its key: registered with the redaction
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], exemplar_filter=AlwaysOnExemplarFilter(),
                       views=[View(instrument_name="*", attribute_keys={"outcome"})])
    a = card(f"m-{key}", price=("1", "1"))
    p = provider("p", a)
    p.script(a.model, Fail(ServerError(f"upstream says {key}", status_code=500)), Reply("ok"))
    async with ModelManager({"fallback": {"strategies": ["retry"], "options": {
            "retry": {"base_delay": 0.001}}}, "timeout": 5}, plugins=squirrel_plugins,
            meter_provider=mp) as mm:
        mm.register_model(a, p)
        await mm.complete(prompt())
    data = reader.get_metrics_data()
    exemplars = [e for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                 for x in m.data.data_points for e in (x.exemplars or [])]
    assert exemplars
    text = repr([(e.filtered_attributes, e.value) for e in exemplars])
    assert key[8:20] not in text and "***" in text
    assert held.reveal() == key
    mp.shutdown()


async def test_a_charge_by_policy_is_cost_not_token_usage(squirrel_manager, squirrel_metrics) -> None:
    """An attempt cut unanswered is charged charge_unanswered's worst case: its cost is
    recorded (money the budget spent), its tokens are not reported as token usage, which the
    GenAI conventions keep to counts the client obtained; the ledger keeps them, marked cut."""
    a = card("a", price=("0.5", "1.5"))
    p = provider("p", a)
    p.script("a", Hang())
    async with squirrel_manager(CONFIG) as mm:
        mm.register_model(a, p)
        await play(mm, "cancelled")
        rows = await mm.budget_backend.rows()
    (row,) = rows
    assert row.usage_source == "cut" and row.input_tokens > 0 and row.output_tokens > 0
    m = squirrel_metrics
    assert row.cost > 0
    assert m.total("squirrel.request.cost") == pytest.approx(float(row.cost), abs=1e-12)
    assert not m.points("gen_ai.client.token.usage")
