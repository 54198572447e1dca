"""A reservation is the attempt's worst case by construction (issue 12, sections 1 and 2).

The output cap the manager sends upstream is the output it reserved; the prompt it reserves
never exceeds the window; every estimate of a partial answer is capped by the reservation;
only usage a provider *reports* above it is an overspend (logged naming the model, counted).
Outcomes tell the truth: a stream cut by the deadline is a timeout, a single failure keeps its
transport cause, DeadlineExceeded counts the attempt in flight.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import anyio
import attrs
import pytest
from squirrel_models import (
    AIRequest,
    BudgetExceeded,
    ConfigError,
    DeadlineExceeded,
    InvalidRequest,
    MalformedResponse,
    ModelCard,
    Price,
    ProviderConnectionError,
    ProviderResponse,
    StreamChunk,
    Usage,
)
from squirrel_models.budget import Charge, Reservation
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.testing import Hang, Reply, StreamReply
from squirrel_models.tokens import DEFAULT_OUTPUT_CAP, BudgetStoreFailed
from squirrel_models.types import MAX_USAGE_TOKENS

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PRICE = Price(Decimal("1"), Decimal("10"))  # USD per million tokens


def budget(limit: str = "5", **extra: Any) -> dict[str, Any]:
    return {"budget": {"limits": [{"scope": "global", "limit": limit}], **extra}}


@attrs.define
class Recording(MemoryBudgetBackend):
    """The memory backend, remembering each reservation and settlement."""

    reservations: list[Reservation] = attrs.field(factory=list)
    settlements: list[tuple[Reservation, Decimal]] = attrs.field(factory=list)

    async def reserve(self, charges: Sequence[Charge], amount: Decimal, *, ttl: float,
                      request_id: str = "") -> Reservation:
        r = await super().reserve(charges, amount, ttl=ttl, request_id=request_id)
        self.reservations.append(r)
        return r

    async def settle(self, reservation: Reservation, amount: Decimal, **kw: Any) -> Decimal:
        self.settlements.append((reservation, amount))
        return await super().settle(reservation, amount, **kw)


@attrs.define
class Honest:
    """An upstream that generates ``words`` one-token words, stops at the ``max_tokens`` it
    is sent (none: all of them) and reports its usage; streams one word per chunk."""

    name: str
    models: list[ModelCard]
    words: int = 300
    delay: float = 0.0
    seen: list[AIRequest] = attrs.field(factory=list)

    async def list_models(self) -> list[ModelCard]:
        return self.models

    def _n(self, request: AIRequest) -> int:
        return min(self.words, request.max_tokens or self.words)

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        self.seen.append(request)
        n = self._n(request)
        return ProviderResponse(" ".join(["w"] * n), Usage(100, n), "length")

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        self.seen.append(request)
        for _ in range(self._n(request)):
            await anyio.sleep(self.delay)
            yield StreamChunk("word" * 25 + " ")  # 101 bytes: a byte upper bound of 101
        yield StreamChunk("", None, "length")  # like llama.cpp: no usage on streams

    async def aclose(self) -> None:
        return None


def unscripted(name: str = "m", **kw: Any) -> ModelCard:
    """A card no token counter knows: prompts and texts are counted by their byte bound."""
    kw.setdefault("features", {"streaming", "system_prompt"})
    kw.setdefault("price", PRICE)
    return ModelCard.for_provider("h", name, provider_type="honest", **kw)


async def manager(squirrel_manager: Any, cards: list[ModelCard], cfg: dict[str, Any],
                  **kw: Any) -> tuple[Any, Honest, Recording]:
    up = Honest("h", cards, **kw)
    backend = Recording()
    mm = squirrel_manager(cfg, budget_backend=backend)
    await mm.start()
    for c in cards:
        mm.register_model(c, up)
    return mm, up, backend


# --- 1. the output cap sent upstream is the output reserved -----------------------------


@pytest.mark.parametrize("max_tokens", [None, 40, 1000])
async def test_sent_max_tokens_is_the_reserved_output(squirrel_manager: Any,
                                                      max_tokens: int | None) -> None:
    c = unscripted(context_window=2000, max_output_tokens=500)
    mm, up, backend = await manager(squirrel_manager, [c], budget())
    req = AIRequest.from_prompt("hello " * 50, max_tokens=max_tokens)
    async with mm:
        resp = await mm.complete(req)
    (sent,) = up.seen
    (r,) = backend.reservations
    est = mm.tokens.estimate(req, c)
    assert sent.max_tokens == est.max_output
    assert r.amount == PRICE.cost(Usage(est.prompt.tokens, sent.max_tokens))
    # the honest upstream produced at most what it was sent: no overspend possible
    assert resp.usage.output_tokens <= sent.max_tokens
    (_, settled), = backend.settlements
    assert settled <= r.amount


async def test_no_max_tokens_and_no_tokenizer_caps_what_the_upstream_may_generate(
        squirrel_manager: Any) -> None:
    # The case: without max_tokens the output room was the window minus the prompt's
    # byte bound (88), but the upstream, sent no cap, generated 300 tokens.
    c = unscripted(context_window=512)
    mm, up, backend = await manager(squirrel_manager, [c], budget(), words=300)
    async with mm:
        resp = await mm.complete(AIRequest.from_prompt("x" * 400))
    (sent,) = up.seen
    assert sent.max_tokens is not None
    assert resp.usage.output_tokens <= sent.max_tokens
    (r,) = backend.reservations
    (_, settled), = backend.settlements
    assert settled <= r.amount


async def test_hi_to_a_128k_model_does_not_reserve_the_window(squirrel_manager: Any) -> None:
    c = unscripted(context_window=128_000, price=Price(Decimal("2.5"), Decimal("10")))
    mm, up, backend = await manager(squirrel_manager, [c], budget("5"))
    async with mm, anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(mm.complete, AIRequest.from_prompt("hi"))
    assert len(backend.reservations) == 6  # six concurrent "hi" fit a $5 budget
    assert all(r.amount < Decimal("0.05") for r in backend.reservations)
    assert all(s.max_tokens == DEFAULT_OUTPUT_CAP for s in up.seen)


async def test_model_output_limit_then_default_max_tokens(squirrel_manager: Any) -> None:
    limited = unscripted("limited", context_window=128_000, max_output_tokens=16_384)
    mm, up, _ = await manager(squirrel_manager, [limited], budget())
    async with mm:
        await mm.complete(AIRequest.from_prompt("hi"))
    assert up.seen[-1].max_tokens == 16_384  # the model's real output limit
    mm, up, _ = await manager(squirrel_manager, [limited], {**budget(), "default_max_tokens": 256})
    async with mm:
        await mm.complete(AIRequest.from_prompt("hi"))
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=1000))
    assert [s.max_tokens for s in up.seen] == [256, 1000]
    small = unscripted("small", context_window=1000, max_output_tokens=100)
    mm, up, _ = await manager(squirrel_manager, [small], {**budget(), "default_max_tokens": 256})
    async with mm:
        await mm.complete(AIRequest.from_prompt("hi"))
    assert up.seen[-1].max_tokens == 100  # capped by the model's limit


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "100", 10**9])
def test_default_max_tokens_is_validated(value: Any) -> None:
    from squirrel_models.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config({"default_max_tokens": value})
    assert info.value.field == "default_max_tokens"


async def test_reserved_prompt_never_exceeds_the_window(squirrel_manager: Any) -> None:
    c = unscripted(context_window=1000)
    mm, _, _ = await manager(squirrel_manager, [c], budget())
    est = mm.tokens.estimate(AIRequest.from_prompt("é" * 2000), c)  # 4,000 bytes
    assert est.prompt.tokens == 1000
    assert est.worst_case_cost == PRICE.cost(Usage(1000, est.max_output))


async def test_budget_refusal_without_max_tokens_says_what_to_set(squirrel_manager: Any) -> None:
    c = unscripted(context_window=128_000, max_output_tokens=16_384)
    mm, _, _ = await manager(squirrel_manager, [c], budget("0.01"))
    async with mm:
        with pytest.raises(BudgetExceeded) as info:
            await mm.complete(AIRequest.from_prompt("hi"))
        assert "max_tokens" in str(info.value) and "default_max_tokens" in str(info.value)
        with pytest.raises(BudgetExceeded) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=16_000))
        assert "default_max_tokens" not in str(info.value)


# --- 2. partial answers are capped by the reservation -----------------------------------


async def _ledger(mm: Any) -> list[Any]:
    return await mm.budget_backend.rows()


@pytest.mark.parametrize("how", ["break", "cancel", "deadline"])
async def test_partial_stream_is_charged_within_its_reservation(squirrel_manager: Any,
                                                                squirrel_metrics: Any,
                                                                how: str) -> None:
    # 16 output tokens reserved; each chunk is 101 bytes, so counting received text by its
    # byte bound used to charge 38 + 101 * chunks: far past the reservation.
    c = unscripted(context_window=4096)
    mm, _, backend = await manager(squirrel_manager, [c], budget(), words=50,
                                   delay=0.05 if how == "deadline" else 0.0)
    req = AIRequest.from_prompt("a prompt of some words", max_tokens=16)
    async with mm:
        if how == "break":
            async with mm.stream(req) as s:
                n = 0
                async for _ in s:
                    n += 1
                    if n == 5:
                        break
        elif how == "cancel":
            with anyio.CancelScope() as scope:
                async with mm.stream(req) as s:
                    n = 0
                    async for _ in s:
                        n += 1
                        if n == 5:
                            scope.cancel()
        else:
            with pytest.raises(DeadlineExceeded):
                async with mm.stream(req, timeout=0.3) as s:
                    async for _ in s:
                        pass
        (r,) = backend.reservations
        (_, settled), = backend.settlements
        assert settled <= r.amount
        (row,) = await _ledger(mm)
    est = mm.tokens.estimate(req, c)
    assert row.output_tokens <= 16 and row.input_tokens <= est.prompt.tokens
    assert squirrel_metrics.points("squirrel.budget.overspend") == []
    if how == "deadline":
        assert (row.outcome, row.error_type) == ("error", "ProviderTimeout")
    else:
        assert row.outcome == "ok"


async def test_reported_excess_is_an_overspend_naming_the_model(
        squirrel_manager: Any, squirrel_metrics: Any, caplog: pytest.LogCaptureFixture) -> None:
    p = provider("p", card("liar", price=("1", "10")))
    p.script("liar", Reply("short", usage=Usage(10, 5000)))  # sent max_tokens=10
    backend = Recording()
    async with squirrel_manager(budget(), budget_backend=backend) as mm:
        mm.register_model(p.models[0], p)
        with caplog.at_level(logging.WARNING):
            resp = await mm.complete(AIRequest.from_prompt("hello there", max_tokens=10))
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert resp.usage.output_tokens == 5000
    assert u.committed == resp.cost and u.reserved == 0  # spent money is never hidden
    (r,) = backend.reservations
    lines = [rec.getMessage() for rec in caplog.records if "overspent" in rec.getMessage()]
    assert lines and all("p/liar" in line for line in lines)
    (point,) = squirrel_metrics.points("squirrel.budget.overspend")
    assert point.attributes["gen_ai.request.model"] == "p/liar"
    assert Decimal(str(point.value)) == pytest.approx(resp.cost - r.amount)


# --- 3. usage validated at the boundary; the reservation never left open ----------------


@pytest.mark.parametrize("bad", [-1, 1e30, 10**30, True, 1.5, "12", None, MAX_USAGE_TOKENS + 1])
def test_absurd_usage_is_a_malformed_response(bad: Any) -> None:
    with pytest.raises(MalformedResponse):
        Usage(10, bad)
    with pytest.raises(MalformedResponse):
        Usage(input_tokens=bad)


class _Count(int):
    """An int subclass: not the plain int the one-expression check takes, judged field by field."""


@pytest.mark.parametrize("source", ["guessed", ["reported"], None, 3])
def test_a_usage_of_no_known_source_is_malformed(source: Any) -> None:
    """Also one that cannot be hashed (a list raised TypeError before)."""
    with pytest.raises(MalformedResponse, match=r"usage\.source"):
        Usage(1, 2, source=source)


def test_usage_counts_of_an_int_subclass_are_judged_in_full() -> None:
    assert Usage(_Count(3), 2).input_tokens == 3
    with pytest.raises(MalformedResponse):
        Usage(_Count(-1), 2)


@attrs.define
class Absurd:
    """An upstream whose usage is absurd: built the way a provider parses it."""

    name: str
    models: list[ModelCard]

    async def list_models(self) -> list[ModelCard]:
        return self.models

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        return ProviderResponse("hi", Usage(10, int(1e30)))

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        yield StreamChunk("hi")
        yield StreamChunk("", Usage(10, int(1e30)), "stop")

    async def aclose(self) -> None:
        return None


async def test_absurd_usage_leaves_no_reservation_open(squirrel_manager: Any) -> None:
    c = unscripted()
    backend = MemoryBudgetBackend()
    async with squirrel_manager({**budget(), "fallback": {"max_attempts": 1}},
                                budget_backend=backend) as mm:
        mm.register_model(c, Absurd("h", [c]))
        with pytest.raises(MalformedResponse):
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=10))
        assert backend.open_reservations == 0
        (u,) = await mm.tokens.check_budget(c)
        # It was answered, so it may have been billed: charged its reservation's worst case
        # (charge_unanswered), never more, never $0 (it was $0 before plugincheck).
        assert u.reserved == 0 and 0 < u.committed <= Decimal(5)


async def test_a_settlement_the_backend_cannot_take_is_typed_and_closed() -> None:
    from squirrel_models.tokens import TokenManager

    class Refusing(MemoryBudgetBackend):
        async def settle(self, reservation: Reservation, amount: Decimal, **kw: Any) -> Decimal:
            if amount != reservation.amount:
                raise ValueError(f"amount {amount} is too large")
            return await super().settle(reservation, amount, **kw)

    from squirrel_models.budget import BudgetLimit

    backend = Refusing()
    c = unscripted()
    tm = TokenManager(lambda *a: None, backend, (BudgetLimit("global", limit=Decimal(5)),))
    est = tm.estimate(AIRequest.from_prompt("hi", max_tokens=10), c)
    r = await tm.reserve(c, est, budget_key=None, request_id="x")
    with pytest.raises(BudgetStoreFailed) as info:
        await tm.settle(r, c, Decimal("1e24"))
    assert isinstance(info.value.__cause__, ValueError)
    assert backend.open_reservations == 0
    (u,) = await backend.usage(r.charges)
    assert (u.committed, u.reserved) == (r.amount, 0)  # settled at what it was allowed


# --- 4. leases outlive requests -----------------------------------------------------------


@pytest.mark.parametrize("extra", [{"timeout": 30}, {"timeout": 5, "attempt_timeout": 30}])
def test_reservation_ttl_shorter_than_a_timeout_is_refused(extra: dict[str, Any]) -> None:
    from squirrel_models.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config({**budget(reservation_ttl=10), **extra})
    assert info.value.field == "budget.reservation_ttl"
    load_config({**budget(reservation_ttl=40), **extra})


async def test_per_call_timeout_longer_than_the_lease(squirrel_manager: Any) -> None:
    c = unscripted()
    mm, _, backend = await manager(squirrel_manager, [c],
                                   {**budget(reservation_ttl=20), "timeout": 10})
    async with mm:
        with pytest.raises(InvalidRequest) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=5), timeout=60)
        assert info.value.field == "timeout"
    # Unset, the lease stretches to the call's timeout (plus cleanup).
    mm, _, backend = await manager(squirrel_manager, [c], {**budget(), "timeout": 10})
    async with mm:
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=5), timeout=2000)
    (r,) = backend.reservations
    assert r.expires_at - backend.clock() > 2000


# --- 5. outcomes tell the truth -----------------------------------------------------------


async def test_stalled_streams_cut_by_the_deadline_open_the_breaker(squirrel_manager: Any) -> None:
    c = unscripted(context_window=4096)
    mm, _, _ = await manager(squirrel_manager, [c], budget(), words=50, delay=10)
    req = AIRequest.from_prompt("stall after the first chunk", max_tokens=16)
    threshold = mm.config.circuit_breaker.failure_threshold
    async with mm:
        mm.tokens  # noqa: B018
        for _ in range(threshold):
            mm._providers["h"].delay = 0.0  # type: ignore[attr-defined]
            with pytest.raises(DeadlineExceeded):
                async with mm.stream(req, timeout=0.2) as s:
                    async for _ in s:
                        mm._providers["h"].delay = 10  # type: ignore[attr-defined]
        rows = await _ledger(mm)
        assert mm.breakers.is_open(c.id)
        assert mm.stats.snapshot(c.id).success_rate < 1.0
    assert [(r.outcome, r.error_type) for r in rows] == [("error", "ProviderTimeout")] * threshold


async def test_single_failure_keeps_its_transport_cause(squirrel_manager: Any) -> None:
    p = provider("p", card("a"))

    class Broken(type(p)):  # type: ignore[misc]
        async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
            try:
                raise ConnectionResetError("peer reset")
            except ConnectionResetError as exc:
                raise ProviderConnectionError("connection reset") from exc

    b = Broken("p", p.models)
    async with squirrel_manager({"fallback": {"max_attempts": 1}}) as mm:
        mm.register_model(p.models[0], b)
        with pytest.raises(ProviderConnectionError) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
    assert info.value.__cause__ is not info.value
    assert isinstance(info.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize("stream", [False, True])
async def test_deadline_counts_the_attempt_in_flight(squirrel_manager: Any, stream: bool) -> None:
    p = provider("p", card("a"))
    p.script("a", Hang())
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(DeadlineExceeded) as info:
            if stream:
                async with mm.stream(AIRequest.from_prompt("hi", max_tokens=5), timeout=0.2):
                    pass
            else:
                await mm.complete(AIRequest.from_prompt("hi", max_tokens=5), timeout=0.2)
        rows = await _ledger(mm)
    assert "1 attempt(s) made" in str(info.value)
    (rec,) = info.value.attempts
    assert rec.outcome == "error" and rec.model_id == "p/a"
    assert [(r.outcome, r.error_type) for r in rows] == [("error", "ProviderTimeout")]


async def test_stream_broken_by_the_deadline_releases_nothing_twice(squirrel_manager: Any) -> None:
    # A StreamReply that stalls: the stream's partial is charged once, within its reservation.
    # Its first chunk is due 0.1 s in and the deadline is 1 s, so it arrives in time on a busy
    # machine too (0.15 s against 0.4 s left none at load 7: nothing was charged); 20 chunks
    # 0.1 s apart outlast the deadline.
    p = provider("p", card("a"))
    p.script("a", StreamReply(tuple(f"w{i} " for i in range(20)), delay=0.1))
    backend = Recording()
    async with squirrel_manager(budget(), budget_backend=backend) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(DeadlineExceeded):
            async with mm.stream(AIRequest.from_prompt("hi", max_tokens=2), timeout=1.0) as s:
                async for _ in s:
                    pass
        assert backend.open_reservations == 0
    (r,) = backend.reservations
    (_, settled), = backend.settlements
    assert settled <= r.amount


async def test_a_loose_prompt_bound_does_not_cut_the_callers_max_tokens(
        squirrel_manager: Any) -> None:
    # 1,200 bytes of prompt: its upper bound fills the window, but it surely fits (a lower
    # bound of 10 tokens): the caller's max_tokens is sent and reserved as it is.
    c = unscripted(context_window=1000)
    mm, up, backend = await manager(squirrel_manager, [c], budget())
    async with mm:
        await mm.complete(AIRequest.from_prompt("word " * 240, max_tokens=100))
    assert up.seen[-1].max_tokens == 100
    (r,) = backend.reservations
    assert r.amount == PRICE.cost(Usage(1000, 100))  # the prompt reserved is the window
