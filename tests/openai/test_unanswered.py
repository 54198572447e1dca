"""An attempt whose request reached the server but whose answer never arrived is charged by
``[budget] charge_unanswered`` (an OpenAI-compatible server keeps generating a non-streamed
answer after its client left, and bills it), marked ``cut`` in the ledger: cut by the
request's deadline, by the caller's cancellation, or by the provider's read timeout, against
the faulty server on 127.0.0.1 answering slower than that. So is an answer that came but
could not be read (a 200 whose body is not JSON or has no choices: the server generated and
billed it), and a 504 (a gateway that forwarded the request gave up waiting). A connection
refused never reached anyone, a 502/503 or a malformed error answer was refused: they cost
nothing. Committed spend equals the ledger's costs in each case."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    DeadlineExceeded,
    MalformedResponse,
    ModelRequirements,
    ProviderConnectionError,
    ProviderTimeout,
    ServerError,
)
from squirrel_models.ledger import summarize
from squirrel_models.types import Usage

from ..support.cut import cut_when
from ..support.faulty_server import FaultyServer
from ..support.ports import closed_port
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

SLOW = "slow:3"
REQUEST = AIRequest.from_prompt("what does a squirrel keep for winter?", max_tokens=40)


def config(base_url: str, *, policy: str | None = None, read_timeout: float = 30.0,
           model: str = SLOW) -> dict[str, Any]:
    budget: dict[str, Any] = {"limits": [{"scope": "global", "limit": "1000"}]}
    if policy is not None:
        budget["charge_unanswered"] = policy
    return {"providers": [{
        "name": "up", "type": "openai", "discover": False,
        "options": {"base_url": base_url, "api_key_env": CANARY_ENV, "prices_from": None,
                    "timeout": read_timeout},
        "models": [{"name": model, "price": {"input": "1000", "output": "3000"}}]}],
        "fallback": {"max_attempts": 1}, "budget": budget}


#: Deadlines tried in turn, each shorter than the upstream's 3 s, until one comes after the
#: request reached the server.
DEADLINES = (0.5, 1.0, 2.0)
NEED = ModelRequirements(models=frozenset({f"up/{SLOW}"}))


async def spend(mm: Any, model: str = SLOW) -> tuple[Decimal, Decimal, list[Any]]:
    """(committed, reserved, ledger rows): committed spend must equal the ledger's costs."""
    (u,) = await mm.tokens.check_budget(mm.models[f"up/{model}"])
    rows = await mm.budget_backend.rows()
    assert u.committed == sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    return u.committed, u.reserved, rows


def charges(mm: Any, model: str = SLOW) -> dict[str, Decimal]:
    """What each policy charges REQUEST on ``model`` (the slow one by default)."""
    card = mm.models[f"up/{model}"]
    estimate = mm.tokens.estimate(REQUEST, card)
    return {"worst_case": estimate.worst_case_cost,
            "prompt": card.price.cost(Usage(estimate.prompt.tokens, 0)),
            "nothing": Decimal(0)}


@pytest.mark.parametrize("policy", [None, "worst_case", "prompt", "nothing"])
async def test_an_attempt_cut_by_the_deadline_is_charged_by_the_policy(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        policy: str | None) -> None:
    # The deadline must come after the request reached the server (which answers in 3 s):
    # at 0.5 s alone, a loaded machine cut it before it was sent (faulty.requests 0), so a
    # longer one is tried then. A request cut before it was sent is another test's case.
    for timeout in DEADLINES:
        before = faulty.requests
        async with squirrel_manager(config(faulty.base_url, policy=policy)) as mm:
            with pytest.raises(DeadlineExceeded):
                await mm.complete(REQUEST, NEED, timeout=timeout)
            committed, reserved, rows = await spend(mm)
            expected = charges(mm)[policy or "worst_case"]
        if faulty.requests > before:
            break
    assert faulty.requests - before == 1  # the request reached the server, which kept on answering
    assert reserved == 0 and committed == expected
    (row,) = rows
    assert (row.outcome, row.error_type, row.cost) == ("error", "ProviderTimeout", expected)
    if policy == "nothing":  # hides what the server may have billed, as asked
        assert (row.usage_source, row.input_tokens, row.output_tokens) == ("reported", 0, 0)
    else:
        assert committed > 0 and row.usage_source == "cut"
        assert row.output_tokens == (REQUEST.max_tokens if policy != "prompt" else 0)
        assert row.input_tokens > 0
        # squirrel usage shows them as tokens no provider reported
        (group,) = summarize(rows, "model")
        assert group["unreported_tokens"] == row.input_tokens + row.output_tokens


async def test_an_attempt_the_caller_cancelled_is_charged_its_worst_case(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    async with squirrel_manager(config(faulty.base_url)) as mm:
        # Left once the request reached the upstream: after a fixed 0.5 s, a loaded machine
        # could leave it before it was sent, which rightly costs nothing.
        assert await cut_when(lambda: faulty.requests >= 1,
                              lambda: mm.complete(REQUEST, NEED, timeout=10))
        committed, reserved, rows = await spend(mm)
        worst = charges(mm)["worst_case"]
    assert faulty.requests == 1
    assert reserved == 0 and committed == worst > 0
    (row,) = rows
    assert (row.outcome, row.usage_source, row.cost, row.output_tokens) == (
        "error", "cut", worst, REQUEST.max_tokens)


async def test_a_read_timeout_after_the_request_left_is_charged_its_worst_case(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    async with squirrel_manager(config(faulty.base_url, read_timeout=0.3)) as mm:
        with pytest.raises(ProviderTimeout) as info:
            await mm.complete(REQUEST, NEED, timeout=10)
        committed, reserved, rows = await spend(mm)
        worst = charges(mm)["worst_case"]
    assert info.value.sent is True and info.value.cost == worst
    assert info.value.usage is not None and info.value.usage.source == "cut"
    assert reserved == 0 and committed == worst > 0
    (row,) = rows
    assert (row.error_type, row.usage_source, row.cost) == ("ProviderTimeout", "cut", worst)


async def test_a_refused_connection_costs_nothing(
        canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    async with squirrel_manager(config(f"http://127.0.0.1:{closed_port()}/v1")) as mm:
        with pytest.raises(ProviderConnectionError) as info:
            await mm.complete(REQUEST, NEED, timeout=10)
        committed, reserved, rows = await spend(mm)
    assert info.value.sent is False and info.value.usage is None
    assert (committed, reserved) == (0, 0)
    (row,) = rows
    assert (row.error_type, row.usage_source, row.cost) == ("ProviderConnectionError", "reported", 0)


@pytest.mark.parametrize("policy", [None, "prompt", "nothing"])
@pytest.mark.parametrize("behaviour", ["malformed", "no-choices"])
async def test_a_200_answer_that_cannot_be_read_is_charged_by_the_policy(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        policy: str | None, behaviour: str) -> None:
    """The server answered 200: it generated, and bills, an answer nobody could read."""
    async with squirrel_manager(config(faulty.base_url, policy=policy, model=behaviour)) as mm:
        with pytest.raises(MalformedResponse) as info:
            await mm.complete(REQUEST, ModelRequirements(models=frozenset({f"up/{behaviour}"})),
                              timeout=10)
        committed, reserved, rows = await spend(mm, behaviour)
        expected = charges(mm, behaviour)[policy or "worst_case"]
    assert info.value.sent is True
    assert reserved == 0 and committed == expected
    (row,) = rows
    assert (row.outcome, row.error_type, row.cost) == ("error", "MalformedResponse", expected)
    if policy == "nothing":
        assert (row.usage_source, row.input_tokens, row.output_tokens) == ("reported", 0, 0)
    else:
        assert committed > 0 and row.usage_source == "cut" and row.input_tokens > 0
        assert row.output_tokens == (REQUEST.max_tokens if policy is None else 0)
        (group,) = summarize(rows, "model")
        assert group["unreported_tokens"] == row.input_tokens + row.output_tokens


@pytest.mark.parametrize(("status", "charged"), [(504, True), (502, False), (503, False)])
async def test_a_gateway_timeout_is_charged_a_refusal_is_not(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        status: int, charged: bool) -> None:
    """A 504: the proxy forwarded the request and gave up waiting while the provider may
    still generate. A 502/503: not forwarded, or refused: nothing generated."""
    model = f"error:{status}"
    async with squirrel_manager(config(faulty.base_url, model=model)) as mm:
        with pytest.raises(ServerError):
            await mm.complete(REQUEST, ModelRequirements(models=frozenset({f"up/{model}"})),
                              timeout=10)
        committed, reserved, rows = await spend(mm, model)
        worst = charges(mm, model)["worst_case"]
    (row,) = rows
    assert reserved == 0 and committed == row.cost == (worst if charged else 0)
    assert row.usage_source == ("cut" if charged else "reported")


async def test_an_error_status_with_a_body_that_cannot_be_read_costs_nothing(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    faulty.serve("ok", b"{this is not json", status=500)
    async with squirrel_manager(config(faulty.base_url, model="ok")) as mm:
        with pytest.raises(ServerError):
            await mm.complete(REQUEST, ModelRequirements(models=frozenset({"up/ok"})), timeout=10)
        committed, reserved, rows = await spend(mm, "ok")
    (row,) = rows
    assert (committed, reserved, row.cost, row.usage_source) == (0, 0, 0, "reported")


async def test_the_chain_falls_back_after_an_answer_that_cannot_be_read(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    """The malformed answer is charged its worst case, the next model's answer what it
    reported; the caller gets the answer."""
    cfg = config(faulty.base_url)
    cfg["providers"][0]["models"] = [{"name": "malformed", "price": {"input": "1", "output": "3"}},
                                     {"name": "ok", "price": {"input": "1000", "output": "3000"}}]
    cfg["fallback"]["max_attempts"] = 2
    cfg["scoring"] = {"policy": "cheapest", "spread": False}  # the malformed one first
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(REQUEST, ModelRequirements(
            models=frozenset({"up/malformed", "up/ok"})), timeout=10)
        committed, reserved, rows = await spend(mm, "ok")
        worst = charges(mm, "malformed")["worst_case"]
    assert [(a.model_id, a.outcome) for a in resp.attempts] == [("up/malformed", "error"),
                                                                 ("up/ok", "ok")]
    bad, good = rows
    assert (bad.error_type, bad.usage_source, bad.cost) == ("MalformedResponse", "cut", worst)
    assert resp.attempts[0].error.cost == worst > 0  # what the observers see it cost
    assert good.usage_source == "reported" and good.cost == resp.cost > 0
    assert reserved == 0 and committed == worst + good.cost
