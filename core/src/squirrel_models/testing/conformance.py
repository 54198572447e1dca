"""Conformance suites a provider, budget backend or rate-limit store runs against itself.

Subclass in your tests and provide the fixtures::

    from squirrel_models.testing.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
        @pytest.fixture
        async def provider(self):          # a started provider instance
            p = MyProvider(...)
            yield p
            await p.aclose()

        @pytest.fixture
        def secrets(self):                 # strings that must never leak (optional)
            return ["sk-canary"]

The tests run on every anyio backend your test session enables. A budget backend subclasses
:class:`BudgetBackendConformance` and provides ``backend``; a rate-limit store subclasses
:class:`RateLimitStoreConformance` and provides ``store`` (a fresh, empty store each time).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, cast

import anyio
import attrs
import pytest

from ..budget import (
    BudgetBackend,
    Charge,
    LedgerBackend,
    LedgerPruning,
    LedgerRow,
    SettlesWithLedger,
    settles_with_ledger,
)
from ..errors import (
    AuthenticationError,
    BudgetExceeded,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    RateLimitExceeded,
    ServerError,
)
from ..providers import Provider
from ..ratelimit import RateCharge, RateLease, RateLimitStore
from ..types import AIRequest, ModelCard, ProviderResponse, StreamChunk
from .fake_server import PROMPT_TOKENS, FakeServer

__all__ = ["HTTPX_UNCLOSED", "WEATHER_TOOL", "BudgetBackendConformance", "HTTPProviderConformance",
           "ProviderConformance", "RateLimitStoreConformance"]

#: An OpenAI-format tool definition, for the checks that tools are honoured or refused.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

#: The warning trio gives for httpx's (and huggingface_hub's copies') unclosed body generators.
HTTPX_UNCLOSED = "Async generator 'http(x|core)2?\\..*was garbage collected"

#: The request the checks send: only what every provider must honour (messages, max_tokens).
PROMPT = AIRequest.from_prompt("Say hello in one short sentence.", max_tokens=16)


class ProviderConformance:
    """Checks the provider contract of :mod:`squirrel_models.providers`."""

    #: True for a provider that sends tools upstream for every model and lets the upstream
    #: decide (an OpenAI-compatible API): a card without the ``tools`` feature may then take
    #: them. False: such a card must refuse them. (:class:`HTTPProviderConformance` checks
    #: what was sent instead.)
    passes_tools_through: ClassVar[bool] = False

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return ()

    @pytest.fixture
    def request_(self) -> AIRequest:
        return PROMPT

    async def _model(self, provider: Provider) -> ModelCard:
        models = await provider.list_models()
        assert models, "a provider must list at least one model"
        return models[0]

    async def test_lists_model_cards(self, provider: Provider) -> None:
        models = await provider.list_models()
        assert models and all(isinstance(m, ModelCard) for m in models)
        ids = [m.id for m in models]
        assert len(set(ids)) == len(ids), "model ids must be unique"
        for m in models:
            assert m.id == f"{provider.name}/{m.model}"
            assert m.provider == provider.name
            assert m.context_window > 0

    async def test_complete_returns_text_and_usage(self, provider: Provider,
                                                   request_: AIRequest) -> None:
        model = await self._model(provider)
        resp = await provider.complete(model, request_)
        assert isinstance(resp, ProviderResponse)
        assert isinstance(resp.text, str)
        assert resp.usage.input_tokens > 0
        assert resp.usage.output_tokens >= 0
        assert resp.usage.cached_tokens <= resp.usage.input_tokens
        assert resp.usage.reasoning_tokens <= resp.usage.output_tokens
        if request_.max_tokens is not None:
            assert resp.usage.output_tokens <= request_.max_tokens

    async def test_stream_ends_with_usage(self, provider: Provider,
                                          request_: AIRequest) -> None:
        model = await self._model(provider)
        chunks: list[StreamChunk] = []
        async for chunk in provider.stream(model, request_):
            assert isinstance(chunk, StreamChunk)
            chunks.append(chunk)
        assert chunks, "a stream yields at least its final chunk"
        last_usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
        assert last_usage is not None, "the last chunk of a stream carries usage"
        assert last_usage.input_tokens > 0
        text = "".join(c.text for c in chunks)
        if request_.max_tokens is not None:
            assert last_usage.output_tokens <= request_.max_tokens
        assert isinstance(text, str)

    async def test_stream_closed_early_leaves_provider_usable(
            self, provider: Provider, request_: AIRequest) -> None:
        model = await self._model(provider)
        it = provider.stream(model, request_).__aiter__()
        await it.__anext__()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        resp = await provider.complete(model, request_)
        assert isinstance(resp.text, str)

    async def test_cancelled_call_leaves_provider_usable(
            self, provider: Provider, request_: AIRequest) -> None:
        model = await self._model(provider)
        with anyio.move_on_after(0.001):
            await provider.complete(model, request_)
        resp = await provider.complete(model, request_)
        assert isinstance(resp.text, str)

    async def test_no_secret_in_repr(self, provider: Provider, secrets: Sequence[str]) -> None:
        text = repr(provider) + str(provider) + repr(await provider.list_models())
        for s in secrets:
            assert s not in text

    async def test_errors_are_model_errors(self, provider: Provider) -> None:
        """A model the provider does not serve fails with a ModelError, not a raw exception."""
        model = await self._model(provider)
        bogus = ModelCard.for_provider(provider.name, "no-such-model-xyz",
                                       provider_type=model.provider_type,
                                       context_window=model.context_window)
        try:
            await provider.complete(bogus, PROMPT)
        except ModelError:
            pass
        # Some providers (a single local model) ignore the model name: answering is fine.

    # --- request fields: honoured or refused, never dropped --------------------------------

    async def _complete_or_refused(self, provider: Provider, model: ModelCard, request: AIRequest
                                   ) -> ProviderResponse | None:
        """The answer, or None when the provider refused the request as this model's limit
        (:class:`InvalidRequestError`): anything else it raises fails the test."""
        try:
            return await provider.complete(model, request)
        except InvalidRequestError:
            return None

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_max_tokens_honoured_or_refused(self, provider: Provider, request_: AIRequest,
                                                  streamed: bool) -> None:
        """An answer never counts more output tokens than ``max_tokens`` allowed."""
        model = await self._model(provider)
        request = attrs.evolve(request_, max_tokens=2)
        if streamed:
            try:
                chunks = [c async for c in provider.stream(model, request)]
            except InvalidRequestError:
                return
            usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
            assert usage is not None, "the last chunk of a stream carries usage"
        else:
            resp = await self._complete_or_refused(provider, model, request)
            if resp is None:
                return
            usage = resp.usage
        assert usage.output_tokens <= 2, f"max_tokens=2 but {usage.output_tokens} output tokens"

    async def test_stop_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """A stop sequence taken from an answer never appears in the answer to a request
        that sets it."""
        model = await self._model(provider)
        first = await provider.complete(model, request_)
        words = first.text.split()
        stop = words[len(words) // 2] if len(words) >= 2 else "e"
        resp = await self._complete_or_refused(provider, model, attrs.evolve(request_, stop=[stop]))
        if resp is not None:
            assert stop not in resp.text, f"stop={stop!r} was not honoured: {resp.text!r}"

    async def test_tools_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """A model whose card does not list the ``tools`` feature refuses a request with tools
        (dropping them would answer another question); one that lists it takes them."""
        model = await self._model(provider)
        request = attrs.evolve(request_, tools=[WEATHER_TOOL], tool_choice="auto")
        resp = await self._complete_or_refused(provider, model, request)
        if "tools" in model.features:
            assert resp is not None, "a model whose card lists tools refused tools"
        elif not self.passes_tools_through:
            assert resp is None, "tools were dropped: refuse them with InvalidRequestError(model_specific=True)"

    async def test_usage_is_reported_or_marked(self, provider: Provider, request_: AIRequest) -> None:
        """Usage says where it comes from, and a count the provider made up is not
        ``reported``: an answer of some text counts some output tokens."""
        model = await self._model(provider)
        resp = await provider.complete(model, request_)
        assert resp.usage.source in ("reported", "counted", "estimated")
        if resp.text.strip():
            assert resp.usage.output_tokens > 0, "an answer with text used no output tokens?"


class HTTPProviderConformance(ProviderConformance):
    """:class:`ProviderConformance` plus the faults of an HTTP upstream, played by the fake
    OpenAI-style server (:class:`~squirrel_models.testing.fake_server.FakeServer`) on
    127.0.0.1. Build the ``provider`` fixture against the ``fake_server`` fixture, with an
    upstream timeout of :attr:`timeout` seconds::

        class TestMyProvider(HTTPProviderConformance):
            @pytest.fixture
            async def provider(self, fake_server):
                p = MyProvider(base_url=fake_server.base_url, timeout=self.timeout)
                yield p
                await p.aclose()

    Each check queues a behaviour for the next request to the provider's first model and
    expects the core's error type: a provider that lets ``httpx.HTTPStatusError`` (or any
    other foreign exception) out fails. The server honours ``max_tokens`` and ``stop``, and
    answers with usage (12 prompt tokens, a token a word) unless told not to.
    """

    #: httpx leaves its own body generators to the garbage collector when a stream is
    #: abandoned (httpx #3686), which trio reports; not the provider's fault, so not an error.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.anyio, pytest.mark.filterwarnings(f"ignore:{HTTPX_UNCLOSED}:ResourceWarning")]
    #: The upstream timeout the provider must be built with, in seconds.
    timeout: float = 1.0

    @pytest.fixture
    def fake_server(self) -> Iterator[FakeServer]:
        with FakeServer(models=("ok",)) as server:
            yield server

    async def _play(self, provider: Provider, server: FakeServer, behaviour: str, *,
                    streamed: bool = False) -> BaseException:
        model = await self._model(provider)
        server.script(model.model, behaviour)
        try:
            if streamed:
                async for _ in provider.stream(model, PROMPT):
                    pass
            else:
                await provider.complete(model, PROMPT)
        except Exception as exc:
            return exc
        raise AssertionError(f"{behaviour!r}: the provider answered instead of failing")

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    @pytest.mark.parametrize(("behaviour", "expected"), [
        ("error:500", ServerError), ("error:502", ServerError), ("error:503", ServerError),
        ("rate-limit:0.25", RateLimited), ("quota", RateLimited), ("error:400", InvalidRequestError),
        ("auth", AuthenticationError), ("context", ContextWindowExceeded), ("reset", ProviderConnectionError),
        ("close", ProviderConnectionError), ("malformed", MalformedResponse), ("hang", ProviderTimeout),
    ])
    async def test_upstream_failures_are_the_core_error_types(
            self, provider: Provider, fake_server: FakeServer, behaviour: str, expected: type[ModelError],
            streamed: bool) -> None:
        if behaviour == "malformed" and streamed:
            behaviour = "malformed-stream"
        with anyio.fail_after(self.timeout * 3 + 5):
            exc = await self._play(provider, fake_server, behaviour, streamed=streamed)
        assert isinstance(exc, expected), (
            f"{behaviour!r} raised {type(exc).__module__}.{type(exc).__name__}, not {expected.__name__}")
        assert fake_server.requests == 1, "a provider makes one upstream attempt: retries are the core's"
        if behaviour.startswith("rate-limit"):
            assert cast(RateLimited, exc).retry_after == 0.25, "Retry-After was not read"

    @pytest.mark.parametrize("behaviour", ["reset-stream", "stream-error"])
    async def test_stream_broken_after_the_first_chunk_is_mid_stream(
            self, provider: Provider, fake_server: FakeServer, behaviour: str) -> None:
        model = await self._model(provider)
        fake_server.script(model.model, behaviour)
        received: list[str] = []
        with anyio.fail_after(self.timeout * 3 + 5), pytest.raises(MidStreamError) as info:
            async for chunk in provider.stream(model, PROMPT):
                received.append(chunk.text)
        assert "".join(received).startswith(info.value.partial_text) and info.value.partial_text
        assert info.value.usage is not None and info.value.usage.output_tokens > 0, \
            "the tokens received are charged"

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_usage_is_reported_or_marked_estimated(self, provider: Provider, fake_server: FakeServer,
                                                         streamed: bool) -> None:
        """The server's usage is passed on as ``reported``; without it, the provider's own count
        is ``counted`` or ``estimated``, never ``reported``."""
        model = await self._model(provider)
        for behaviour in ("ok", "no-usage"):
            fake_server.script(model.model, behaviour)
            if streamed:
                chunks = [c async for c in provider.stream(model, PROMPT)]
                usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
                assert usage is not None, "the last chunk of a stream carries usage"
            else:
                usage = (await provider.complete(model, PROMPT)).usage
            assert usage.input_tokens > 0 and usage.output_tokens > 0
            if behaviour == "no-usage":
                assert usage.source != "reported", "the server reported no usage: it is counted or estimated"
            elif usage.source == "reported":
                assert usage.input_tokens == PROMPT_TOKENS, "reported usage is the server's"

    async def test_tools_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """Covered by :meth:`test_request_fields_are_sent_or_refused`, which sees what was sent."""

    async def test_request_fields_are_sent_or_refused(self, provider: Provider, fake_server: FakeServer) -> None:
        """``max_tokens``, ``stop`` and tools either reach the server or are refused (or, for
        ``max_tokens`` and ``stop``, honoured on the answer as it arrives)."""
        model = await self._model(provider)
        request = attrs.evolve(PROMPT, max_tokens=3, stop=["nice"])
        resp = await self._complete_or_refused(provider, model, request)
        if resp is not None:
            sent = fake_server.payloads_seen[-1]
            assert resp.usage.output_tokens <= 3 or sent.get("max_tokens") == 3
            assert "nice" not in resp.text
        fake_server.script(model.model, "tool-call")
        request = attrs.evolve(PROMPT, tools=[WEATHER_TOOL], tool_choice="auto")
        resp = await self._complete_or_refused(provider, model, request)
        if resp is not None:
            sent = fake_server.payloads_seen[-1]
            assert sent.get("tools") == [WEATHER_TOOL], "tools were dropped: send them or refuse them"
            assert [c.name for c in resp.tool_calls] == ["get_weather"], "the model's tool call was lost"


class BudgetBackendConformance:
    """Checks the budget backend contract of :mod:`squirrel_models.budget`.

    Provide a ``backend`` fixture yielding a fresh, empty backend. The ``ledger_*`` tests
    run only for a backend that declares ``settles_with_ledger = True``; ``ledger_prune``
    also needs ``prune`` (:class:`~squirrel_models.budget.LedgerPruning`).
    """

    def charge(self, scope: str = "global", limit: str = "1.00", bucket: str = "total"
               ) -> Charge:
        return Charge(scope, "total" if bucket == "total" else "day", bucket, Decimal(limit))

    async def test_reserve_within_limit(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.40"), ttl=60)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal(0), Decimal("0.40"))
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert u.reserved == 0

    async def test_reserve_beyond_limit_refused(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="0.50")
        await backend.reserve([c], Decimal("0.30"), ttl=60)
        with pytest.raises(BudgetExceeded) as info:
            await backend.reserve([c], Decimal("0.30"), ttl=60)
        assert info.value.scope == "global"
        (u,) = await backend.usage([c])
        assert u.reserved == Decimal("0.30")

    async def test_reserve_is_all_or_nothing(self, backend: BudgetBackend) -> None:
        roomy, tight = self.charge("global", "10"), self.charge("key:team", "0.10")
        with pytest.raises(BudgetExceeded) as info:
            await backend.reserve([roomy, tight], Decimal("0.20"), ttl=60)
        assert info.value.scope == "key:team"
        u = await backend.usage([roomy, tight])
        assert [x.reserved for x in u] == [0, 0]

    async def test_settle_commits_actual(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.50"), ttl=60)
        over = await backend.settle(r, Decimal("0.20"))
        assert over == 0
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.20"), Decimal(0))

    async def test_overspend_is_recorded_in_full(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.10"), ttl=60)
        over = await backend.settle(r, Decimal("0.15"))
        assert over == Decimal("0.05")
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.15")

    async def test_settle_and_release_are_idempotent(self, backend: BudgetBackend) -> None:
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60)
        await backend.settle(r, Decimal("0.10"))
        await backend.settle(r, Decimal("0.10"))
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.10"), Decimal(0))
        r2 = await backend.reserve([c], Decimal("0.30"), ttl=60)
        await backend.release(r2)
        await backend.release(r2)
        (u,) = await backend.usage([c])
        assert u.reserved == 0

    async def test_zero_price_reserves_zero(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="0")
        r = await backend.reserve([c], Decimal(0), ttl=60)
        await backend.settle(r, Decimal(0))
        (u,) = await backend.usage([c])
        assert u.committed == 0

    async def test_expired_lease_returns_headroom(self, backend: BudgetBackend) -> None:
        c = self.charge(limit="1")
        r = await backend.reserve([c], Decimal("0.90"), ttl=0.05)
        await anyio.sleep(0.15)
        assert await backend.reconcile() >= 1
        (u,) = await backend.usage([c])
        assert u.reserved == 0
        # A late settle still commits what was spent (never hidden), once.
        await backend.settle(r, Decimal("0.30"))
        await backend.settle(r, Decimal("0.30"))
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.30")

    async def test_buckets_are_separate(self, backend: BudgetBackend) -> None:
        d1, d2 = self.charge(bucket="2026-11-25"), self.charge(bucket="2026-11-26")
        r = await backend.reserve([d1], Decimal("0.90"), ttl=60)
        await backend.settle(r, Decimal("0.90"))
        await backend.reserve([d2], Decimal("0.90"), ttl=60)
        u1, u2 = await backend.usage([d1, d2])
        assert (u1.committed, u2.reserved) == (Decimal("0.90"), Decimal("0.90"))

    async def test_concurrent_reservations_never_overspend(self, backend: BudgetBackend
                                                           ) -> None:
        c = self.charge(limit="1.00")
        rng = random.Random(7)
        granted: list[Any] = []
        peak = Decimal(0)

        async def worker(i: int) -> None:
            nonlocal peak
            amount = Decimal(rng.randint(1, 30)) / 100
            try:
                r = await backend.reserve([c], amount, ttl=60, request_id=f"r{i}")
            except BudgetExceeded:
                return
            (u,) = await backend.usage([c])
            peak = max(peak, u.committed + u.reserved)
            await anyio.sleep(rng.random() / 100)
            if rng.random() < 0.5:
                await backend.settle(r, amount * rng.randint(0, 100) / 100)
            else:
                await backend.release(r)
            granted.append(r)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(worker, i)
        (u,) = await backend.usage([c])
        assert peak <= c.limit
        assert u.reserved == 0
        assert u.committed <= c.limit
        assert granted

    async def test_usage_of_unknown_bucket_is_zero(self, backend: BudgetBackend) -> None:
        c = Charge("model:x/y", "month", datetime.now(UTC).strftime("%Y-%m"), Decimal(5))
        (u,) = await backend.usage([c])
        assert u.committed == 0
        assert u.reserved == 0
        assert u.limit == Decimal(5)

    # --- settle with its ledger row (settles_with_ledger = True) ----------------------------

    def ledger_row(self, request_id: str, cost: str, attempt: int = 1) -> LedgerRow:
        return LedgerRow(request_id, attempt, "p", "p/m", "ok", 120, 30, cost=Decimal(cost),
                         latency_s=0.25, scopes=("global",))

    async def _rows_of(self, backend: BudgetBackend, request_id: str) -> list[LedgerRow]:
        if not settles_with_ledger(backend):
            pytest.skip("the backend does not declare settles_with_ledger = True")
        rows = await cast(LedgerBackend, backend).rows()
        return [r for r in rows if r.request_id == request_id]

    async def test_ledger_settle_writes_spend_and_row_once(self, backend: BudgetBackend
                                                           ) -> None:
        """A settle with a ledger row commits the spend and writes the row, both once: a
        repeated settle (a retry after a lost reply, say) writes no second row."""
        await self._rows_of(backend, "req-settle")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.50"), ttl=60, request_id="req-settle")
        row = self.ledger_row("req-settle", "0.123456789")
        over = await cast(SettlesWithLedger, backend).settle(r, Decimal("0.123456789"), ledger=row)
        assert over == 0
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.123456789"), Decimal(0))
        (got,) = await self._rows_of(backend, "req-settle")
        assert (got.attempt, got.provider, got.model, got.outcome, got.input_tokens,
                got.output_tokens, got.cost, got.scopes) == (
            1, "p", "p/m", "ok", 120, 30, Decimal("0.123456789"), ("global",))
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.123456789"), ledger=row)
        await backend.release(r)
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.123456789")
        assert len(await self._rows_of(backend, "req-settle")) == 1

    async def test_ledger_settle_of_released_reservation_writes_nothing(
            self, backend: BudgetBackend) -> None:
        """The row goes with the spend: a settle that commits nothing writes no row."""
        await self._rows_of(backend, "req-released")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60, request_id="req-released")
        await backend.release(r)
        await cast(SettlesWithLedger, backend).settle(
            r, Decimal("0.10"), ledger=self.ledger_row("req-released", "0.10"))
        (u,) = await backend.usage([c])
        assert u.committed == 0
        assert await self._rows_of(backend, "req-released") == []

    async def test_ledger_settle_without_row_writes_none(self, backend: BudgetBackend) -> None:
        await self._rows_of(backend, "req-plain")
        c = self.charge()
        r = await backend.reserve([c], Decimal("0.30"), ttl=60, request_id="req-plain")
        await backend.settle(r, Decimal("0.10"))
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.10"), ledger=None)
        assert await self._rows_of(backend, "req-plain") == []

    async def test_ledger_late_settle_after_expiry_writes_row_once(self, backend: BudgetBackend
                                                                   ) -> None:
        """A settle after the lease expired still commits its spend, and its row, once."""
        await self._rows_of(backend, "req-late")
        c = self.charge(limit="1")
        r = await backend.reserve([c], Decimal("0.90"), ttl=0.05, request_id="req-late")
        await anyio.sleep(0.15)
        assert await backend.reconcile() >= 1
        row = self.ledger_row("req-late", "0.30", attempt=2)
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.30"), ledger=row)
        await cast(SettlesWithLedger, backend).settle(r, Decimal("0.30"), ledger=row)
        (u,) = await backend.usage([c])
        assert u.committed == Decimal("0.30")
        (got,) = await self._rows_of(backend, "req-late")
        assert (got.attempt, got.cost) == (2, Decimal("0.30"))

    async def test_ledger_prune_keeps_committed_spend(self, backend: BudgetBackend) -> None:
        """``prune(before)`` deletes the rows older than ``before`` only, returns how many, and
        never touches committed spend."""
        await self._rows_of(backend, "req-prune-old")
        if not isinstance(backend, LedgerPruning):
            pytest.skip("the backend has no prune")
        c = self.charge()
        cutoff = datetime(2021, 1, 1, tzinfo=UTC)
        for rid, at in (("req-prune-old", datetime(2020, 6, 1, tzinfo=UTC)),
                        ("req-prune-new", datetime.now(UTC))):
            r = await backend.reserve([c], Decimal("0.20"), ttl=60, request_id=rid)
            row = attrs.evolve(self.ledger_row(rid, "0.10"), at=at)
            await cast(SettlesWithLedger, backend).settle(r, Decimal("0.10"), ledger=row)
        assert await backend.prune(cutoff) == 1
        assert await self._rows_of(backend, "req-prune-old") == []
        assert len(await self._rows_of(backend, "req-prune-new")) == 1
        (u,) = await backend.usage([c])
        assert (u.committed, u.reserved) == (Decimal("0.20"), Decimal(0))
        assert await backend.prune(cutoff) == 0


class RateLimitStoreConformance:
    """Checks the rate-limit store contract of :mod:`squirrel_models.ratelimit`.

    Provide a ``store`` fixture yielding a fresh, empty store. Some tests sleep through short
    windows and leases (a fraction of a second each); the concurrency test runs for about
    ``storm_seconds`` (default 1.2 s: override the fixture for a slow store).
    """

    @pytest.fixture
    def storm_seconds(self) -> float:
        return 1.2

    def charge(self, kind: str, limit: int, scope: str = "model:p/m", window: float = 60.0
               ) -> RateCharge:
        return RateCharge(scope, kind, limit, window)  # type: ignore[arg-type]

    async def _used(self, store: RateLimitStore, *charges: RateCharge) -> list[int]:
        return [u.used for u in await store.usage(charges)]

    async def test_admits_within_the_limit_and_refuses_beyond(self, store: RateLimitStore
                                                               ) -> None:
        rpm = self.charge("rpm", 3)
        for _ in range(3):
            await store.reserve([rpm], 10, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([rpm], 10, ttl=60)
        e = info.value
        assert (e.scope, e.kind, e.limit, e.used, e.requested) == ("model:p/m", "rpm", 3, 3, 1)
        assert e.retry_in is not None and 0 < e.retry_in <= 60
        (u,) = await store.usage([rpm])
        assert (u.used, u.remaining, u.limit) == (3, 0, 3)
        assert u.retry_in is not None and 0 < u.retry_in <= 60

    async def test_reserve_is_all_or_nothing(self, store: RateLimitStore) -> None:
        roomy = self.charge("rpm", 100, scope="provider:p")
        tight = self.charge("tpm", 500, scope="key:team")
        slot = self.charge("concurrent", 10, scope="global")
        await store.reserve([roomy, tight, slot], 400, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([roomy, tight, slot], 200, ttl=60)
        assert (info.value.scope, info.value.kind, info.value.requested) == ("key:team", "tpm", 200)
        assert await self._used(store, roomy, tight, slot) == [1, 400, 1]

    async def test_tpm_reserves_the_worst_case_and_settle_sets_the_real_count(
            self, store: RateLimitStore) -> None:
        tpm = self.charge("tpm", 1000)
        lease = await store.reserve([tpm], 800, ttl=60)
        assert isinstance(lease, RateLease) and lease.tokens == 800
        (u,) = await store.usage([tpm])
        assert (u.used, u.reserved) == (800, 800)
        with pytest.raises(RateLimitExceeded):
            await store.reserve([tpm], 300, ttl=60)
        assert await store.settle(lease, 100) == 0
        (u,) = await store.usage([tpm])
        assert (u.used, u.reserved) == (100, 0)
        await store.reserve([tpm], 300, ttl=60)  # the difference came back at once
        assert await self._used(store, tpm) == [400]

    async def test_settle_above_the_reservation_counts_in_full(self, store: RateLimitStore
                                                               ) -> None:
        tpm = self.charge("tpm", 1000)
        lease = await store.reserve([tpm], 100, ttl=60)
        assert await store.settle(lease, 150) == 50
        assert await self._used(store, tpm) == [150]

    async def test_settle_frees_the_slot_and_keeps_the_request(self, store: RateLimitStore
                                                               ) -> None:
        rpm, slot = self.charge("rpm", 5), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, slot], 10, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([rpm, slot], 10, ttl=60)
        assert (info.value.kind, info.value.retry_in) == ("concurrent", None)
        await store.settle(lease, 10)
        assert await self._used(store, rpm, slot) == [1, 0]
        await store.reserve([rpm, slot], 10, ttl=60)
        assert await self._used(store, rpm, slot) == [2, 1]

    async def test_release_returns_all_room(self, store: RateLimitStore) -> None:
        rpm, tpm, slot = self.charge("rpm", 1), self.charge("tpm", 100), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, tpm, slot], 100, ttl=60)
        for charges in ([rpm], [tpm], [slot]):
            with pytest.raises(RateLimitExceeded):
                await store.reserve(charges, 1, ttl=60)
        await store.release(lease)
        assert await self._used(store, rpm, tpm, slot) == [0, 0, 0]
        await store.reserve([rpm, tpm, slot], 100, ttl=60)

    async def test_settle_and_release_are_idempotent(self, store: RateLimitStore) -> None:
        rpm, tpm, slot = self.charge("rpm", 10), self.charge("tpm", 1000), self.charge("concurrent", 5)
        lease = await store.reserve([rpm, tpm, slot], 500, ttl=60)
        assert await store.settle(lease, 200) == 0
        assert await store.settle(lease, 900) == 0  # a second settle changes nothing
        await store.release(lease)  # nor does a release after the settle
        assert await self._used(store, rpm, tpm, slot) == [1, 200, 0]
        other = await store.reserve([rpm, tpm, slot], 300, ttl=60)
        await store.release(other)
        await store.release(other)
        await store.settle(other, 300)  # nor a settle after the release
        assert await self._used(store, rpm, tpm, slot) == [1, 200, 0]

    async def test_more_than_the_limit_never_fits(self, store: RateLimitStore) -> None:
        tpm = self.charge("tpm", 100)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([tpm], 101, ttl=60)
        assert info.value.retry_in is None and info.value.never
        assert await self._used(store, tpm) == [0]

    async def test_counts_are_per_scope_and_kind(self, store: RateLimitStore) -> None:
        a, b = self.charge("rpm", 1, scope="model:p/a"), self.charge("rpm", 1, scope="model:p/b")
        await store.reserve([a], 10, ttl=60)
        await store.reserve([b], 10, ttl=60)
        await store.reserve([self.charge("tpm", 10, scope="model:p/a")], 10, ttl=60)
        assert await self._used(store, a, b) == [1, 1]

    async def test_usage_of_an_unknown_scope_is_zero(self, store: RateLimitStore) -> None:
        charges = [self.charge(k, 5, scope="key:nobody") for k in ("rpm", "tpm", "concurrent")]
        for u in await store.usage(charges):
            assert (u.used, u.reserved, u.remaining, u.retry_in) == (0, 0, 5, 0)

    async def test_the_window_slides(self, store: RateLimitStore) -> None:
        """An admission counts for ``window`` seconds after it, then its room comes back;
        ``retry_in`` says when (within the window, never before the room is back)."""
        rpm = self.charge("rpm", 2, window=0.6)
        await store.reserve([rpm], 1, ttl=60)
        await anyio.sleep(0.2)
        await store.reserve([rpm], 1, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([rpm], 1, ttl=60)
        retry = info.value.retry_in
        assert retry is not None and 0 < retry <= 0.4 + 0.01  # when the first one leaves
        await anyio.sleep(retry + 0.05)
        await store.reserve([rpm], 1, ttl=60)  # the first left the window: room for one
        with pytest.raises(RateLimitExceeded):
            await store.reserve([rpm], 1, ttl=60)

    async def test_leases_expire_and_give_their_slot_back(self, store: RateLimitStore) -> None:
        """A lease past its ttl (a killed process's, say) frees its concurrency slot; its
        request and tokens still count in the window, and a late settle still sets them."""
        rpm, tpm, slot = self.charge("rpm", 5), self.charge("tpm", 1000), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, tpm, slot], 600, ttl=0.05)
        assert lease.expires_at > lease.at
        await anyio.sleep(0.15)
        assert await store.reconcile() >= 1
        assert await self._used(store, rpm, tpm, slot) == [1, 600, 0]
        second = await store.reserve([rpm, slot], 1, ttl=60)  # the slot came back
        await store.settle(lease, 250)
        assert await self._used(store, rpm, tpm, slot) == [2, 250, 1]
        await store.release(second)

    async def test_concurrent_admission_never_passes_a_limit(
            self, store: RateLimitStore, storm_seconds: float) -> None:
        """Many tasks reserving, settling and releasing for a while against rpm, tpm and
        concurrency limits with short windows: in every window, what was admitted and not
        released stays within each limit, and the requests in flight never pass theirs."""
        window = 0.25
        rpm = self.charge("rpm", 12, window=window)
        tpm = self.charge("tpm", 1500, window=window)
        slot = self.charge("concurrent", 4)
        rng = random.Random(14)
        kept: list[tuple[float, int]] = []  # (admitted at, final tokens) of unreleased leases
        inflight = peak = refused = 0
        stop = anyio.current_time() + storm_seconds

        async def worker() -> None:
            nonlocal inflight, peak, refused
            while anyio.current_time() < stop:
                tokens = rng.randint(50, 400)
                try:
                    lease = await store.reserve([rpm, tpm, slot], tokens, ttl=60)
                except RateLimitExceeded:
                    refused += 1
                    await anyio.sleep(rng.random() / 50)
                    continue
                inflight += 1
                peak = max(peak, inflight)
                await anyio.sleep(rng.random() / 100)
                inflight -= 1
                if rng.random() < 0.2:
                    await store.release(lease)
                else:
                    used = rng.randint(0, tokens)
                    await store.settle(lease, used)
                    kept.append((lease.at, used))

        async with anyio.create_task_group() as tg:
            for _ in range(24):
                tg.start_soon(worker)
        assert kept and refused, "the storm must both admit and refuse"
        assert peak <= slot.limit
        kept.sort()
        for j, (at_j, _) in enumerate(kept):
            # what counted together with admission j: the kept admissions still in its window
            together = [t for at, t in kept[:j + 1] if at > at_j - window + 1e-6]
            assert len(together) <= rpm.limit, f"{len(together)} requests in one window"
            assert sum(together) <= tpm.limit, f"{sum(together)} tokens in one window"
        assert await self._used(store, slot) == [0]
