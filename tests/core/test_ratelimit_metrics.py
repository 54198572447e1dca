"""``squirrel.ratelimit.refusals``: every refusal a rate limit hands to the request flow is
counted once, labelled by the scope's kind and the limit's kind (never a model, provider or
caller key), read through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import anyio
import pytest
from squirrel_models import AIRequest, RateLimitExceeded, RateLimitTooSmall
from squirrel_models.testing import Reply

from .helpers import card, provider

pytestmark = pytest.mark.anyio

NAME = "squirrel.ratelimit.refusals"
PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def register(mm, *providers) -> None:
    for p in providers:
        for c in p.models:
            mm.register_model(c, p)


def labels(squirrel_metrics) -> list[tuple[dict[str, object], float]]:
    return sorted(((dict(p.attributes), p.value) for p in squirrel_metrics.points(NAME)),
                  key=lambda x: sorted(x[0].items()))


async def test_a_model_refusal_is_counted_once_by_kinds(squirrel_manager, squirrel_metrics) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b", price=("1", "1")))
    mm = squirrel_manager({"rate_limits": {"limits": [{"scope": "model:p/a", "rpm": 2}]}})
    register(mm, p)
    async with mm:
        for _ in range(2):
            assert (await mm.complete(PROMPT)).model == "p/a"
        assert squirrel_metrics.points(NAME) == []  # admitted: nothing refused
        third = await mm.complete(PROMPT)  # refused on p/a, answered by p/b
        assert [a.outcome for a in third.attempts] == ["refused", "ok"]
        assert labels(squirrel_metrics) == [({"scope": "model", "kind": "rpm", "source": "configured"}, 1)]
        # Selection now leaves p/a out: no attempt is refused, nothing more is counted.
        assert (await mm.complete(PROMPT)).attempts[0].outcome == "ok"
        assert squirrel_metrics.total(NAME) == 1


async def test_key_refusals_are_counted_without_the_key(squirrel_manager, squirrel_metrics) -> None:
    key = "team-7f3a9c"
    p = provider("p", card("a"))
    mm = squirrel_manager({"rate_limits": {"limits": [{"scope": "key:*", "rpm": 1, "tpm": 50}]}})
    register(mm, p)
    req = AIRequest.from_prompt("hi", max_tokens=5, budget_key=key)
    async with mm:
        await mm.complete(req)
        for _ in range(2):
            with pytest.raises(RateLimitExceeded):
                await mm.complete(req)
        with pytest.raises(RateLimitTooSmall):  # more tokens than the limit: can never fit
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=200, budget_key="other"))
    assert labels(squirrel_metrics) == [({"scope": "key", "kind": "rpm", "source": "configured"}, 2),
                                        ({"scope": "key", "kind": "tpm", "source": "configured"}, 1)]
    assert key not in squirrel_metrics.everything() and "other" not in squirrel_metrics.everything()


async def test_every_candidate_at_its_limit_counts_the_request(squirrel_manager, squirrel_metrics) -> None:
    p = provider("p", card("a"))
    mm = squirrel_manager({"rate_limits": {"limits": [{"scope": "provider:p", "rpm": 1}]}})
    register(mm, p)
    async with mm:
        await mm.complete(PROMPT)
        with pytest.raises(RateLimitExceeded):  # refused at admission: counted
            await mm.complete(PROMPT)
        with pytest.raises(RateLimitExceeded):  # left out by selection, refused there: counted
            await mm.complete(PROMPT)
    assert labels(squirrel_metrics) == [({"scope": "provider", "kind": "rpm", "source": "configured"}, 2)]


async def test_a_wait_that_finds_room_is_no_refusal(squirrel_manager, squirrel_metrics) -> None:
    p = provider("p", card("a"))
    p.default = Reply("slow", delay=0.2)
    mm = squirrel_manager({"rate_limits": {"limits": [{"scope": "global", "max_concurrent": 1}],
                                           "max_wait": 30.0}})
    register(mm, p)
    async with mm, anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(mm.complete, PROMPT)
    assert squirrel_metrics.total(NAME) == 0
    p.default = Reply("held", delay=60)  # holds the slot until cancelled, however slow the machine
    mm = squirrel_manager({"rate_limits": {"limits": [{"scope": "global", "max_concurrent": 1}],
                                           "max_wait": 30.0}})  # a closed manager is not reused
    register(mm, p)
    async with mm, anyio.create_task_group() as tg:
        tg.start_soon(mm.complete, PROMPT)
        calls = p.calls["a"]
        while p.calls["a"] == calls:  # the first holds the slot
            await anyio.sleep(0.01)
        with pytest.raises(RateLimitExceeded):  # the wait would pass the deadline: refused
            await mm.complete(PROMPT, timeout=0.1)
        tg.cancel_scope.cancel()
    assert labels(squirrel_metrics) == [({"scope": "global", "kind": "concurrent", "source": "configured"}, 1)]
