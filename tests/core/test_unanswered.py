"""``[budget] charge_unanswered``: an attempt whose request may have reached the provider but
whose answer never came is charged by policy (``worst_case`` by default, ``prompt``,
``nothing``), marked ``cut``; one that provably never reached it costs nothing. Committed
spend equals the ledger's costs, and the cost metric sees the charge. The real HTTP cases
(deadline, caller, read timeout, refused connection) are in tests/openai/test_unanswered.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest
import sniffio
from squirrel_models import (
    AIRequest,
    ConfigError,
    DeadlineExceeded,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from squirrel_models.config import load_config
from squirrel_models.testing import Fail, Hang, Reply, StreamReply
from squirrel_models.types import StreamChunk, Usage
from squirrel_models.unanswered import mark_unsent, mark_unsent_if_in, may_have_reached
from squirrel_models.upstream import request_sent

from .helpers import card, cut_once_called, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def config(policy: str | None = None) -> dict[str, Any]:
    budget: dict[str, Any] = {"limits": [{"scope": "global", "limit": "1"}]}
    if policy is not None:
        budget["charge_unanswered"] = policy
    return {"budget": budget, "fallback": {"max_attempts": 1}}


async def spent(mm: Any, c: Any) -> tuple[Decimal, Decimal, list[Any]]:
    (u,) = await mm.tokens.check_budget(c)
    rows = await mm.budget_backend.rows()
    assert u.committed == sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    return u.committed, u.reserved, rows


def expected(mm: Any, c: Any, policy: str) -> Decimal:
    estimate = mm.tokens.estimate(PROMPT, c)
    return {"worst_case": estimate.worst_case_cost,
            "prompt": c.price.cost(Usage(estimate.prompt.tokens, 0)),
            "nothing": Decimal(0)}[policy]


@pytest.mark.parametrize("policy", ["worst_case", "prompt", "nothing"])
async def test_each_policy_charges_a_timed_out_attempt(squirrel_manager: Any, policy: str) -> None:
    p = provider("p", card("a"))
    p.default = Fail(ProviderTimeout("no answer in time"))
    async with squirrel_manager(config(policy)) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(ProviderTimeout) as info:
            await mm.complete(PROMPT)
        committed, reserved, rows = await spent(mm, p.models[0])
        want = expected(mm, p.models[0], policy)
    assert reserved == 0 and committed == want
    (row,) = rows
    assert row.cost == want and info.value.cost == (None if policy == "nothing" else want)
    assert row.usage_source == ("reported" if policy == "nothing" else "cut")
    assert row.output_tokens == (10 if policy == "worst_case" else 0)


@pytest.mark.parametrize("error", [
    RateLimited("slow down", status_code=429),
    ProviderTimeout("HTTP 408", status_code=408),
    ServerError("HTTP 500", status_code=500),
    ProviderConnectionError("refused"),
    ProviderTimeout("pool timeout"),
    ModelError("a bug in a plugin"),
], ids=["429", "408", "500", "connection-not-sent", "pool-timeout-not-sent", "other"])
async def test_what_never_reached_the_provider_costs_nothing(squirrel_manager: Any,
                                                              error: ModelError) -> None:
    if error.status_code is None and isinstance(error, ProviderConnectionError | ProviderTimeout):
        error.sent = False  # what the boundary says of a refused connection, a pool timeout
    p = provider("p", card("a"))
    p.default = Fail(error)
    async with squirrel_manager(config()) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(ModelError):
            await mm.complete(PROMPT)
        committed, reserved, rows = await spent(mm, p.models[0])
    assert (committed, reserved) == (0, 0)
    assert [(r.cost, r.usage_source) for r in rows] == [(0, "reported")]


async def test_a_lost_connection_nobody_explained_is_charged(squirrel_manager: Any) -> None:
    """A provider that raises ProviderConnectionError without saying whether its request left
    (``sent`` None): no answer came and no status says it was refused, so it may have been
    billed."""
    p = provider("p", card("a"))
    p.default = Fail(ProviderConnectionError("connection lost"))
    async with squirrel_manager(config()) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(ProviderConnectionError):
            await mm.complete(PROMPT)
        committed, _, rows = await spent(mm, p.models[0])
        assert committed == expected(mm, p.models[0], "worst_case") > 0
    assert [r.usage_source for r in rows] == ["cut"]


async def test_attempt_timeout_charges_and_the_cost_metric_sees_it(squirrel_manager: Any,
                                                                  squirrel_metrics: Any) -> None:
    p = provider("p", card("a"))
    p.default = Hang()
    async with squirrel_manager({**config(), "attempt_timeout": 0.05}) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(ProviderTimeout):
            await mm.complete(PROMPT)
        committed, _, _ = await spent(mm, p.models[0])
        worst = expected(mm, p.models[0], "worst_case")
    assert committed == worst > 0
    assert squirrel_metrics.total("squirrel.request.cost") == pytest.approx(float(worst))
    # The worst case charged is an assumption, not a count: no token usage is reported for it
    assert not squirrel_metrics.points("gen_ai.client.token.usage")


async def test_an_unpriced_model_stays_unknown(squirrel_manager: Any) -> None:
    p = provider("p", card("free-of-price", price=None))
    p.default = Hang()
    async with squirrel_manager({"budget": {"allow_unpriced": True}}) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(DeadlineExceeded) as info:
            await mm.complete(PROMPT, timeout=0.1)
        rows = await mm.budget_backend.rows()
    (rec,) = info.value.attempts
    assert rec.usage is not None and rec.usage.source == "cut"
    assert [(r.cost, r.usage_source) for r in rows] == [(None, "cut")]


@pytest.mark.parametrize("policy", ["worst_case", "prompt", "nothing"])
async def test_a_stream_cut_before_its_first_chunk_is_charged_by_the_policy(
        squirrel_manager: Any, policy: str) -> None:
    """Its request left and no chunk came: unanswered, as a non-streamed attempt."""
    p = provider("p", card("a"))
    p.default = StreamReply(("one ", "two ", "three"), delay=5)
    async with squirrel_manager(config(policy)) as mm:
        mm.register_model(p.models[0], p)

        async def read() -> None:
            async with mm.stream(PROMPT) as s:
                async for _ in s:
                    pass

        # Once the provider's stream has begun: after a fixed 0.2 s, a loaded machine could
        # still be reserving, a request no policy charges.
        assert await cut_once_called(p, "a", read)
        committed, reserved, rows = await spent(mm, p.models[0])
        want = expected(mm, p.models[0], policy)
    assert reserved == 0 and committed == want
    if policy == "nothing":  # as a non-streamed call the caller left: no charge, no row
        assert rows == []
        return
    (row,) = rows
    assert row.usage_source == "cut"
    assert row.output_tokens == (10 if policy == "worst_case" else 0)


async def test_a_stream_cut_after_its_first_chunk_is_charged_what_it_received(
        squirrel_manager: Any) -> None:
    p = provider("p", card("a"))
    p.default = StreamReply(("one ", "two ", "three"), delay=0.01)
    async with squirrel_manager(config()) as mm:
        mm.register_model(p.models[0], p)
        with anyio.CancelScope() as scope:
            async with mm.stream(PROMPT) as s:
                async for _ in s:
                    scope.cancel()  # the caller leaves after the first chunk
        committed, reserved, rows = await spent(mm, p.models[0])
        worst = expected(mm, p.models[0], "worst_case")
    (row,) = rows
    assert row.usage_source != "cut" and row.input_tokens > 0 and row.output_tokens == 1
    assert reserved == 0 and 0 < committed == row.cost < worst


async def test_an_answer_is_never_touched(squirrel_manager: Any) -> None:
    p = provider("p", card("a"))
    p.default = Reply("hi")
    async with squirrel_manager(config()) as mm:
        mm.register_model(p.models[0], p)
        resp = await mm.complete(PROMPT)
        committed, _, rows = await spent(mm, p.models[0])
    assert committed == resp.cost and [r.usage_source for r in rows] == [resp.usage.source]


async def test_reload_changes_the_policy_live(squirrel_manager: Any) -> None:
    p = provider("p", card("a"))
    p.default = Fail(ProviderTimeout("no answer in time"))
    async with squirrel_manager(config()) as mm:
        mm.register_model(p.models[0], p)
        await mm.reload(config("nothing"))
        mm.register_model(p.models[0], p)
        with pytest.raises(ProviderTimeout):
            await mm.complete(PROMPT)
        committed, _, rows = await spent(mm, p.models[0])
    assert committed == 0 and [r.usage_source for r in rows] == ["reported"]


def test_a_bad_policy_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"budget": {"charge_unanswered": "all"}})
    assert info.value.field == "budget.charge_unanswered"
    assert "worst_case, prompt, nothing" in str(info.value)
    assert load_config({}).budget.charge_unanswered == "worst_case"


def test_request_sent_reads_the_client_exception_chain() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert request_sent(httpx.ReadTimeout("slow", request=request)) is True
    assert request_sent(httpx.RemoteProtocolError("gone", request=request)) is True
    assert request_sent(httpx.ConnectError("refused", request=request)) is False
    assert request_sent(httpx.PoolTimeout("pool", request=request)) is False
    assert request_sent(httpx.ConnectTimeout("connect", request=request)) is False
    assert request_sent(ConnectionRefusedError()) is False
    assert request_sent(ValueError("?")) is None
    wrapped = httpx.ConnectTimeout("dropped")  # httpx-aiohttp: a drop after the send, as a connect timeout
    wrapped.__cause__ = type("ServerDisconnectedError", (Exception,), {})()
    assert request_sent(wrapped) is True


async def test_may_have_reached_judges_by_what_the_error_says() -> None:
    assert may_have_reached(ProviderTimeout("t")) and may_have_reached(ProviderConnectionError("c"))
    said = ProviderTimeout("t")
    said.sent = False
    assert not may_have_reached(said)
    assert not may_have_reached(ProviderTimeout("408", status_code=408))
    assert not may_have_reached(ServerError("500"))
    assert not may_have_reached(ValueError("?"))
    # Ctrl-C under trio arrives inside the provider's call, as a cancellation would: it may
    # have left (it was charged $0 before).
    assert may_have_reached(KeyboardInterrupt())
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except anyio.get_cancelled_exc_class() as exc:
            caught.append(exc)
            raise
    assert may_have_reached(caught[0])


async def test_a_cancellation_marked_unsent_never_reached_the_provider() -> None:
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except anyio.get_cancelled_exc_class() as exc:
            mark_unsent(exc)  # what a provider says of a call still waiting for a connection
            caught.append(exc)
            raise
    assert not may_have_reached(caught[0])


class _CountingStream:
    """A stream whose provider counts what the attempt used (a local model does): once
    closed, its ``usage`` says more than the text received (tokens generated but never
    sent, a prompt read whole)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.sent = 0

    def __aiter__(self) -> _CountingStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self.sent:
            await anyio.sleep_forever()  # the next piece never comes
        self.sent += 1
        return StreamChunk("x")

    async def aclose(self) -> None:
        self.usage = Usage(3, 6, source="counted")


class _CountingProvider:
    name = "p"
    cancel_safe = True

    def __init__(self, c: Any) -> None:
        self.models = [c]

    async def list_models(self) -> list[Any]:
        return self.models

    async def complete(self, model: Any, request: AIRequest) -> Any:
        raise AssertionError("streams only")

    def stream(self, model: Any, request: AIRequest) -> _CountingStream:
        return _CountingStream()

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("cut", ["break", "caller", "deadline"])
async def test_a_stream_cut_after_its_first_chunk_is_charged_what_its_provider_counted(
        squirrel_manager: Any, squirrel_metrics: Any, cut: str) -> None:
    """The iterator's ``usage`` once closed (see Provider.stream) is charged, not the core's
    count of the one character received; the token metric reports it (it is a count)."""
    c = card("a")
    p = _CountingProvider(c)
    async with squirrel_manager(config()) as mm:
        mm.register_model(c, p)  # type: ignore[arg-type]
        with anyio.move_on_after(10) as scope:
            try:
                async with mm.stream(PROMPT, timeout=0.2 if cut == "deadline" else 10) as s:
                    async for _ in s:
                        if cut == "break":
                            break
                        if cut == "caller":
                            scope.cancel()
            except DeadlineExceeded:
                pass
        committed, reserved, rows = await spent(mm, c)
    (row,) = rows
    assert (row.usage_source, row.input_tokens, row.output_tokens) == ("counted", 3, 6)
    assert reserved == 0 and committed == row.cost == c.price.cost(Usage(3, 6))  # type: ignore[union-attr]
    assert squirrel_metrics.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == 6


class _NurseryProvider:
    """A provider whose call waits inside a task group, as httpcore's connect does under trio
    (``trio.open_tcp_stream`` races its connection attempts in a nursery): cut there, the
    cancellation comes out of the group in an exception group under trio. ``connecting``:
    the call says so of a cut there (``mark_unsent_if_in`` over its own waiting code)."""

    def __init__(self, c: Any, *, connecting: bool) -> None:
        self.models, self.connecting = [c], connecting

    async def list_models(self) -> list[Any]:
        return self.models

    @staticmethod
    async def _connect() -> None:
        if sniffio.current_async_library() == "trio":
            import trio

            async with trio.open_nursery() as nursery:  # as trio.open_tcp_stream's
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
        else:
            await anyio.sleep_forever()

    async def complete(self, model: Any, request: AIRequest) -> Any:
        try:
            await self._connect()
        except BaseException as exc:
            if self.connecting:
                mark_unsent_if_in(exc, (self._connect.__code__,))
            raise
        raise AssertionError("never connects")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("connecting", [False, True], ids=["may have left", "never left"])
async def test_a_cancellation_in_an_exception_group_is_the_cancellation(
        squirrel_manager: Any, connecting: bool) -> None:
    """Before, under trio, the group was not taken for the deadline's cut: the attempt went
    unrecorded ("0 attempt(s) made") and uncharged, whatever it may have cost."""
    c = card("a")
    async with squirrel_manager(config()) as mm:
        mm.register_model(c, _NurseryProvider(c, connecting=connecting))  # type: ignore[arg-type]
        with pytest.raises(DeadlineExceeded) as info:
            await mm.complete(PROMPT, timeout=0.2)
        committed, reserved, rows = await spent(mm, c)
        worst = expected(mm, c, "worst_case")
    (rec,) = info.value.attempts
    (row,) = rows
    assert row.error_type == "ProviderTimeout" and reserved == 0
    if connecting:
        assert (row.usage_source, row.cost, committed) == ("reported", 0, 0)
    else:
        assert (row.usage_source, row.cost, committed) == ("cut", worst, worst)
        assert rec.usage is not None and rec.usage.source == "cut"

