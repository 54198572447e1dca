"""ModelManager end to end with the scripted provider: routing, fallback, streaming, budgets."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    CapabilityNotSupported,
    ContextWindowExceeded,
    CostCeilingExceeded,
    DeadlineExceeded,
    FallbackExhausted,
    InvalidRequestError,
    MidStreamError,
    ModelRequirements,
    RateLimited,
    ServerError,
    UnpricedModel,
)
from squirrel_models.testing import Fail, Hang, Reply, StreamReply

from .helpers import card, cut_once_called, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def budget(limit: str = "1", **extra: object) -> dict[str, object]:
    return {"budget": {"limits": [{"scope": "global", "limit": limit}], **extra}}


async def test_routes_to_best_and_reports_cost(squirrel_manager) -> None:
    p = provider("p", card("cheap", price=("0.1", "0.2")), card("dear", price=("10", "20")))
    p.script("cheap", Reply("hi from cheap"))
    async with squirrel_manager(budget()) as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
    assert resp.model == "p/cheap"
    assert resp.text == "hi from cheap"
    # words + 2 per message in; words out (the scripted provider's exact count)
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (4, 3)
    assert resp.cost == (4 * Decimal("0.1") + 3 * Decimal("0.2")) / 1_000_000
    assert [a.outcome for a in resp.attempts] == ["ok"]
    assert resp.decision.chosen.card.id == "p/cheap"


async def test_fallback_to_next_candidate_on_server_errors(squirrel_manager) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b", price=("1", "1")))
    p.script("a", Fail(ServerError("boom", status_code=500)),
             Fail(ServerError("boom", status_code=500)))
    cfg = {"fallback": {"options": {"retry": {"base_delay": 0.001}}}}
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
    assert resp.model == "p/b"
    # a healthy alternative first: no backoff, no retry of the failing model
    assert [(a.model_id, a.outcome) for a in resp.attempts] == [("p/a", "error"), ("p/b", "ok")]


async def test_retry_the_same_model_only_without_an_alternative(squirrel_manager) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b", price=("1", "1")))
    p.script("a", Fail(ServerError("boom", status_code=500)), Reply("second try"))
    cfg = {"fallback": {"options": {"retry": {"base_delay": 0.001}}}}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(p.models[0], p)  # alone: the retry is the only way on
        resp = await mm.complete(PROMPT)
        assert [(a.model_id, a.outcome) for a in resp.attempts] == [("p/a", "error"), ("p/a", "ok")]
    p.script("a", Fail(ServerError("boom", status_code=500)), Reply("second try"))
    cfg["fallback"]["strategies"] = ["retry", "next_candidate"]  # retry first, by choice
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
        assert [(a.model_id, a.outcome) for a in resp.attempts] == [("p/a", "error"), ("p/a", "ok")]


@pytest.mark.parametrize("streamed", [False, True])
async def test_reason_names_the_model_that_answered_and_each_failed_attempt(
        squirrel_manager, streamed: bool) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b", price=("1", "1")))
    p.script("a", Fail(ServerError("HTTP 500 (boom)\nsecond line", status_code=500)))
    cfg = {"fallback": {"strategies": ["next_candidate"]}}
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        before = mm.rank().reason()
        if streamed:
            async with mm.stream(PROMPT) as s:
                async for _ in s:
                    pass
            resp = s.response
        else:
            resp = await mm.complete(PROMPT)
    assert before.startswith("score ")  # no answer yet: why the first candidate leads
    why = resp.decision.reason()
    assert resp.model == "p/b" and resp.decision.answered_by == "p/b"
    assert why.startswith("answered by p/b, ranked #2 of 2: score ")
    assert "p/a was first" in why
    assert why.endswith("after 1 failed attempt(s): 1. p/a: ServerError: HTTP 500 (boom)")
    data = resp.decision.to_dict()
    assert data["answered_by"] == "p/b"
    assert [(a["model"], a["outcome"], a["error_type"]) for a in data["attempts"]] == [
        ("p/a", "error", "ServerError"), ("p/b", "ok", None)]


async def test_attempts_are_bounded(squirrel_manager) -> None:
    cards = [card(f"m{i}") for i in range(6)]
    p = provider("p", *cards)
    p.default = Fail(ServerError("down", status_code=503))
    cfg = {"fallback": {"max_attempts": 4, "options": {"retry": {"base_delay": 0.001}}}}
    async with squirrel_manager(cfg) as mm:
        for c in cards:
            mm.register_model(c, p)
        with pytest.raises(FallbackExhausted) as info:
            await mm.complete(PROMPT)
    assert sum(p.calls.values()) == 4
    assert len(info.value.errors) == 4
    assert all(isinstance(e, ServerError) for e in info.value.errors)


@pytest.mark.parametrize("status", [400, 422])
async def test_requests_that_cannot_succeed_are_not_retried(squirrel_manager, status) -> None:
    p = provider("p", card("a"), card("b"))
    p.default = Fail(InvalidRequestError("bad", status_code=status))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        with pytest.raises(InvalidRequestError):
            await mm.complete(PROMPT)
    assert sum(p.calls.values()) == 1


async def test_auth_failure_moves_to_another_model_without_retry(squirrel_manager) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b"))
    p.script("a", Fail(AuthenticationError("401", status_code=401)))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
    assert resp.model == "p/b"
    assert p.calls == {"a": 1, "b": 1}


async def test_retry_after_is_honoured(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.script("a", Fail(RateLimited(retry_after=0.2)))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        t0 = anyio.current_time()
        resp = await mm.complete(PROMPT)
        waited = anyio.current_time() - t0
    assert resp.model == "p/a"
    assert waited >= 0.2


async def test_deadline_holds_against_a_hang(squirrel_manager) -> None:
    p = provider("p", card("a"), card("b"))
    p.default = Hang()
    async with squirrel_manager(budget()) as mm:
        for c in p.models:
            mm.register_model(c, p)
        t0 = anyio.current_time()
        with pytest.raises(DeadlineExceeded):
            await mm.complete(PROMPT, timeout=0.2)
        assert anyio.current_time() - t0 < 1.0
        (u,) = await mm.tokens.check_budget(p.models[0])
        rows = await mm.budget_backend.rows()
        worst = mm.tokens.estimate(PROMPT, p.models[0]).worst_case_cost
    # The hung call may have been billed (charge_unanswered = "worst_case"): its reservation
    # is charged whole, an estimate the ledger says it is; nothing stays reserved.
    assert u.reserved == 0 and u.committed == worst > 0
    assert [(r.error_type, r.usage_source, r.cost) for r in rows] == [
        ("ProviderTimeout", "cut", worst)]
    assert mm.budget_backend.open_reservations == 0


async def test_larger_context_on_overflow(squirrel_manager) -> None:
    small = card("small", context_window=100, price=("0.1", "0.1"))
    big = card("big", context_window=10_000, price=("5", "5"))
    p = provider("p", small, big)
    p.script("small", Fail(ContextWindowExceeded(needed=500, window=100)))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
    assert resp.model == "p/big"


async def test_cost_ceiling_refuses_before_any_call(squirrel_manager) -> None:
    p = provider("p", card("dear", price=("1000", "1000")))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(CostCeilingExceeded) as info:
            await mm.complete(PROMPT, ModelRequirements(max_request_cost="0.001"))
    assert p.calls == {}
    assert "exceeds the $0.001 ceiling" in str(info.value)
    assert "worst case $0.01" in str(info.value)


async def test_unpriced_model_refused_under_budget(squirrel_manager) -> None:
    p = provider("p", card("mystery", price=None))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(UnpricedModel, match="no known price"):
            await mm.complete(PROMPT)
    assert p.calls == {}


async def test_unpriced_allowed_explicitly_reports_unknown_cost(squirrel_manager,
                                                               squirrel_metrics) -> None:
    p = provider("p", card("mystery", price=None))
    async with squirrel_manager(budget(allow_unpriced=True)) as mm:
        mm.register_model(p.models[0], p)
        resp = await mm.complete(PROMPT)
    assert resp.cost is None
    assert squirrel_metrics.total("squirrel.unpriced.requests") == 1


async def test_explicit_zero_price_is_honoured(squirrel_manager) -> None:
    p = provider("p", card("local", price=("0", "0")))
    async with squirrel_manager(budget("0")) as mm:
        mm.register_model(p.models[0], p)
        resp = await mm.complete(PROMPT)
    assert resp.cost == 0


async def test_budget_exhaustion_refuses(squirrel_manager) -> None:
    p = provider("p", card("a", price=("100000", "100000")))
    async with squirrel_manager(budget("1")) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(Exception) as info:
            for _ in range(100):
                await mm.complete(PROMPT)
    assert type(info.value).__name__ == "BudgetExceeded"
    assert "budget global (total) cannot take" in str(info.value)


async def test_no_candidate_explains_exclusions(squirrel_manager) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(CapabilityNotSupported, match="lacks capability vision"):
            await mm.complete(PROMPT, ModelRequirements(min_capabilities={"chat", "vision"}))


async def test_stream_delivers_chunks_and_charges(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.script("a", StreamReply(("one ", "two ", "three")))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        async with mm.stream(PROMPT) as s:
            texts = [c.text async for c in s]
        assert s.response is not None
        assert "".join(texts) == "one two three"
        assert s.response.usage.output_tokens == 3
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert u.committed == s.response.cost and u.reserved == 0


async def test_stream_response_is_set_when_iteration_ends(squirrel_manager) -> None:
    """``s.response`` and the settlement come when the ``async for`` ends, not at block exit."""
    p = provider("p", card("a"))
    p.script("a", StreamReply(("one ", "two ", "three")), StreamReply(()))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        async with mm.stream(PROMPT) as s:
            assert s.response is None
            async for _ in s:
                pass
            assert s.response is not None
            assert s.response.text == "one two three"
            (u,) = await mm.tokens.check_budget(p.models[0])
            assert (u.reserved, u.committed) == (0, s.response.cost)
            async for _ in s:  # iterating again neither yields nor settles twice
                raise AssertionError("a finished stream yielded")
        (u,) = await mm.tokens.check_budget(p.models[0])
        assert (u.reserved, u.committed) == (0, s.response.cost)
        async with mm.stream(PROMPT) as empty:  # a stream that ends at once
            assert "".join([c.text async for c in empty]) == ""
            assert empty.response is not None and empty.response.text == ""


async def test_stream_response_is_set_when_the_stream_breaks(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.script("a", StreamReply(("alpha ", "beta ", "gamma"), fail_after=2))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(MidStreamError):
            async with mm.stream(PROMPT) as s:
                try:
                    async for _ in s:
                        pass
                except MidStreamError:
                    assert s.response is not None
                    assert s.response.attempts[-1].outcome == "error"
                    (u,) = await mm.tokens.check_budget(p.models[0])
                    assert u.reserved == 0 and u.committed == s.response.cost
                    raise


async def test_a_broken_stream_says_so_once(squirrel_manager) -> None:
    """A provider's MidStreamError that already says the stream broke (the openai plugin's)
    reached the caller as 'stream broke after its first chunk: stream broke after ...'."""
    p = provider("p", card("a"))
    p.script("a", StreamReply(("alpha ", "beta "), fail_after=1,
                              error=ServerError("stream broke after its first chunk: HTTP 500")),
             StreamReply(("alpha ", "beta "), fail_after=1, error=ServerError("reset")))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        for why in ("HTTP 500", "reset"):
            with pytest.raises(MidStreamError) as info:
                async with mm.stream(PROMPT) as s:
                    async for _ in s:
                        pass
            assert str(info.value) == f"stream broke after its first chunk: {why}"


async def test_stream_falls_back_before_first_chunk(squirrel_manager) -> None:
    p = provider("p", card("a", price=("0.1", "0.1")), card("b"))
    p.script("a", Fail(ServerError("502", status_code=502)),
             Fail(ServerError("502", status_code=502)))
    p.script("b", StreamReply(("fine",)))
    async with squirrel_manager({"fallback": {"options": {"retry": {"base_delay": 0.001}}}}
                                ) as mm:
        for c in p.models:
            mm.register_model(c, p)
        async with mm.stream(PROMPT) as s:
            text = "".join([c.text async for c in s])
    assert text == "fine"
    assert s.response.model == "p/b"


async def test_mid_stream_failure_is_typed_and_charged(squirrel_manager) -> None:
    p = provider("p", card("a"), card("b"))
    p.script("a", StreamReply(("alpha ", "beta ", "gamma"), fail_after=2))
    p.script("b", StreamReply(("never",)))
    async with squirrel_manager(budget()) as mm:
        for c in p.models:
            mm.register_model(c, p)
        got: list[str] = []
        with pytest.raises(MidStreamError) as info:
            async with mm.stream(PROMPT) as s:
                async for c in s:
                    got.append(c.text)
        assert info.value.partial_text == "alpha beta "
        assert p.calls.get("b", 0) == 0  # never replayed
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert u.reserved == 0
    assert u.committed == p.models[0].price.cost(info.value.usage)
    assert info.value.usage.output_tokens == 2


async def test_stream_closed_early_settles_received(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.script("a", StreamReply(tuple(f"w{i} " for i in range(50)), send_usage=False))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        async with mm.stream(PROMPT) as s:
            async for _ in s:
                if len(s.text.split()) >= 3:
                    break
        assert p.open_streams == 0
        assert s.response.usage.output_tokens == 3
        assert s.response.usage.source == "counted"
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert u.reserved == 0


async def test_cancellation_charges_the_worst_case_and_leaves_nothing_reserved(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.default = Reply("slow", delay=5)
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        # Once the provider is answering: cancelled after 0.05 s, the request could still be
        # reserving on a loaded machine, which charges nothing.
        assert await cut_once_called(p, "a", lambda: mm.complete(PROMPT))
        (u,) = await mm.tokens.check_budget(p.models[0])
        rows = await mm.budget_backend.rows()
        worst = mm.tokens.estimate(PROMPT, p.models[0]).worst_case_cost
        # Cancelled while the provider answered: it may bill the attempt, so its worst case
        # is charged (charge_unanswered), and nothing stays reserved.
        assert (u.reserved, u.committed) == (0, worst)
        assert [(r.outcome, r.usage_source, r.cost) for r in rows] == [("error", "cut", worst)]
        assert mm.budget_backend.open_reservations == 0


async def test_all_cooling_down_says_when(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.default = Fail(ServerError("down", status_code=500))
    cfg = {"circuit_breaker": {"failure_threshold": 1, "base_cooldown": 30.0},
           "fallback": {"max_attempts": 1}}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(ServerError):
            await mm.complete(PROMPT)
        from squirrel_models import AllCoolingDown

        with pytest.raises(AllCoolingDown, match=r"earliest retry in 29\.\d+s|30\.0s"):
            await mm.complete(PROMPT)
    assert p.calls == {"a": 1}  # the open breaker made no upstream call


async def test_metrics_follow_genai_conventions(squirrel_manager, squirrel_metrics) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager(budget()) as mm:
        mm.register_model(p.models[0], p)
        await mm.complete(PROMPT)
        await mm.complete(PROMPT)
    tokens = squirrel_metrics.points("gen_ai.client.token.usage")
    kinds = {pt.attributes["gen_ai.token.type"] for pt in tokens}
    assert kinds == {"input", "output"}
    assert squirrel_metrics.total("squirrel.fallback.attempts", outcome="ok") == 2
    assert squirrel_metrics.total("squirrel.selection.cache.hits") >= 1
    assert squirrel_metrics.points("gen_ai.client.operation.duration")
    assert squirrel_metrics.points("squirrel.request.cost")
    assert squirrel_metrics.points("squirrel.budget.utilization")


async def test_context_manager_closes_providers(squirrel_manager) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
    assert p.closed


async def test_estimate_accuracy_is_measured(squirrel_manager, squirrel_metrics) -> None:
    """Resource usage accuracy: reported prompt tokens over the pre-call count."""
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        await mm.complete(PROMPT)
    (point,) = squirrel_metrics.points("squirrel.tokens.estimate_ratio")
    assert point.sum == 1.0  # the scripted provider's count is exact
    assert point.attributes["exact"] is True


async def test_model_specific_refusal_falls_back(squirrel_manager) -> None:
    """A model that cannot take a valid request (no tool support, say) hands it to the next."""
    p = provider("p", card("a", price=("0.1", "0.1")), card("b"))
    p.script("a", Fail(InvalidRequestError("a takes no tools", model_specific=True)))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        resp = await mm.complete(PROMPT)
    assert resp.model == "p/b"
    assert p.calls == {"a": 1, "b": 1}
