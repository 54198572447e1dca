"""Any answer of the OpenAI-compatible server the huggingface plugin talks to (the faulty server
on 127.0.0.1, through huggingface_hub's own client) ends in success or a typed ``ModelError``,
with any status code, any headers, any body and any SSE stream, whole or cut at any byte
(:mod:`tests.support.upstream_fuzz`). Through a ``ModelManager`` with a budget, a priced model's
answer never costs a silent $0, usage is never negative, a settlement never charges more than
its reservation (unless the upstream itself reported more than it was allowed: that excess is
recorded, never hidden) and every reservation ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, ModelCard, ModelManager, ModelOverride, Price, SquirrelError
from squirrel_models.budget import Reservation
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.errors import ModelError
from squirrel_models.types import assemble_tool_calls
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.faulty_server import FaultyServer
from ..support.upstream_fuzz import (
    BODIES,
    CUT_STREAMS,
    HEADERS,
    STATUSES,
    STREAMS,
    TOOL_CALL_ANSWERS,
    Lent,
    check_tool_calls,
)

pytestmark = pytest.mark.anyio

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
CARD = ModelCard.for_provider("srv", "fuzz", provider_type="huggingface", features={"streaming", "tools"},
                              price=Price(Decimal(1), Decimal(1)), context_window=4096)
CONTENT_TYPES = st.sampled_from(["application/json", "text/event-stream", "text/html", "text/plain",
                                 "application/json; charset=utf-8", "application/octet-stream", ""])
ANSWERS = st.tuples(STATUSES, HEADERS, st.one_of(BODIES, STREAMS, CUT_STREAMS), CONTENT_TYPES)


class Spy(MemoryBudgetBackend):
    """The in-memory backend, noting each settlement with its reservation."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: list[tuple[Decimal, Decimal]] = []

    async def settle(self, reservation: Reservation, amount: Decimal, *, ledger: Any = None) -> Decimal:
        self.settled.append((reservation.amount, amount))
        return await super().settle(reservation, amount, ledger=ledger)


@pytest.fixture
async def provider(faulty_session: FaultyServer) -> AsyncIterator[HuggingFaceProvider]:
    p = HuggingFaceProvider("srv", HuggingFaceOptions(base_url=faulty_session.base_url, timeout=2.0),
                            models=[ModelOverride("fuzz")])
    yield p
    await p.aclose()


def serve(server: FaultyServer, answer: tuple[int, dict[str, str], bytes, str], times: int) -> None:
    status, headers, body, content_type = answer
    for _ in range(times):
        server.serve("fuzz", body, status=status, content_type=content_type, headers=headers)


def check_usage(response: Any) -> None:
    u = response.usage
    assert min(u.input_tokens, u.output_tokens, u.cached_tokens, u.reasoning_tokens) >= 0, u


async def alone(provider: HuggingFaceProvider, stream: bool) -> None:
    """The provider alone: success (usage never negative) or a ModelError."""
    try:
        if stream:
            async for chunk in provider.stream(CARD, REQUEST):
                if chunk.usage is not None:
                    assert min(chunk.usage.input_tokens, chunk.usage.output_tokens) >= 0
        else:
            check_usage(await provider.complete(CARD, REQUEST))
    except ModelError:
        pass


async def through_manager(provider: HuggingFaceProvider, stream: bool) -> None:
    spy = Spy()
    mm = ModelManager({"budget": {"limits": [{"scope": "global", "limit": "100"}]},
                       "fallback": {"max_attempts": 2, "options": {"retry": {"base_delay": 0.0}}},
                       "timeout": 5.0}, budget_backend=spy)
    mm.register_model(CARD, Lent(provider))  # type: ignore[arg-type]
    response = None
    try:
        async with mm:
            if stream:
                async with mm.stream(REQUEST) as s:
                    async for _ in s:
                        pass
                response = s.response
            else:
                response = await mm.complete(REQUEST)
    except SquirrelError:
        pass
    assert spy.open_reservations == 0
    if response is not None:
        check_usage(response)
        # priced at $1 per million tokens either way: a prompt was sent, so never $0
        assert response.cost is not None and response.cost > 0, response
    reported = response is not None and response.usage.source == "reported"
    for reserved, charged in spy.settled:
        assert charged >= 0
        assert charged <= reserved or reported, (reserved, charged, response)


@FUZZ
@given(answer=ANSWERS, stream=st.booleans())
async def test_any_answer_ends_typed_and_charges_within_its_reservation(
        faulty_session: FaultyServer, provider: HuggingFaceProvider,
        answer: tuple[int, dict[str, str], bytes, str], stream: bool) -> None:
    serve(faulty_session, answer, 1)
    await alone(provider, stream)
    serve(faulty_session, answer, 2)  # a retry gets the same answer
    await through_manager(provider, stream)
    faulty_session._scripts.pop("fuzz", None)
    faulty_session._raw.clear()


@settings(FUZZ, max_examples=200)
@given(shaped=TOOL_CALL_ANSWERS)
async def test_any_tool_call_shape_is_a_runnable_call_or_a_squirrel_error(
        faulty_session: FaultyServer, provider: HuggingFaceProvider, shaped: tuple[bool, bytes]) -> None:
    """Never a tool call with an empty name: huggingface_hub's objects (or the plain mappings
    its parser left) with a ``function`` that was not an object, or a name that was missing,
    were passed on with ``name=""`` (:mod:`squirrel_models.toolcalls`)."""
    stream, body = shaped
    faulty_session.serve("fuzz", body, status=200,
                         content_type="text/event-stream" if stream else "application/json")
    try:
        if stream:
            calls = assemble_tool_calls([d async for c in provider.stream(CARD, REQUEST) for d in c.tool_calls])
        else:
            calls = (await provider.complete(CARD, REQUEST)).tool_calls
    except SquirrelError:
        calls = ()
    finally:
        faulty_session._scripts.pop("fuzz", None)
    check_tool_calls(calls)
