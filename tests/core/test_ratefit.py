"""Rate limits a request can never fit: a tpm below its worst case, or 0 on the caller's
key. Selection leaves such a model out with the reason (only configured limits decide, never
the window's usage), fallback moves on, and with no model left the refusal is
RateLimitTooSmall at once, naming the limit."""

from __future__ import annotations

import anyio
import pytest
from squirrel_models import AIRequest, RateLimitExceeded, RateLimitTooSmall
from squirrel_models.ratelimit import RateCharge
from squirrel_models.testing import Reply

from .helpers import card, provider
from .test_ratelimit import PROMPT, limits, register, two_models, usage_of

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("scope", ["model:p/a", "provider:p", "key:*", "global"])
async def test_a_worst_case_above_a_tpm_limit_is_refused_for_good(squirrel_manager,
                                                                  scope: str) -> None:
    """An attempt whose worst case (4 prompt tokens + 10 of output cap) is above the whole
    window's limit can never be admitted: it was a RateLimitExceeded (a 429 at the gateway,
    retried for ever by clients) that max_wait even waited on. It is RateLimitTooSmall at
    once, naming the limit and the worst case, with nothing held and no call upstream."""
    p = provider("p", card("a"))
    p.default = Reply("x")
    tpm = RateCharge("model:p/a" if scope == "model:p/a" else
                     "key:k" if scope == "key:*" else scope, "tpm", 13)
    mm = squirrel_manager(limits({"scope": scope, "tpm": 13}, max_wait=30.0))
    register(mm, p)
    async with mm:
        req = AIRequest.from_prompt("hello there", max_tokens=10, budget_key="k")
        with anyio.fail_after(20), pytest.raises(RateLimitTooSmall) as info:
            await mm.complete(req)
        err = info.value
        assert not isinstance(err, RateLimitExceeded) and err.retry_in is None
        assert (err.scope, err.kind, err.limit, err.requested) == (tpm.scope, "tpm", 13, 14)
        assert f"tpm limit 13 on {tpm.scope} is below the 14 tokens" in str(err)
        assert "never" in str(err)
        assert p.calls["a"] == 0 and await usage_of(mm, tpm) == [0]
        # one token less of output and it fits
        ok = AIRequest.from_prompt("hello there", max_tokens=9, budget_key="k")
        assert (await mm.complete(ok)).model == "p/a"


async def test_a_model_whose_tpm_limit_is_too_small_is_left_out_with_the_reason(
        squirrel_manager) -> None:
    """Too small a limit on one model sends the request to the next candidate, and a caller's
    key too small for one model's worst case still lets a model with a smaller output cap
    answer. Before: the model was ranked first, its attempt refused with RateLimitTooSmall,
    and neither the decision nor ``explain()`` said why it was passed over; now selection
    leaves it out, naming the limit, its scope and the numbers."""
    p = two_models()
    p.default = Reply("x")
    mm = squirrel_manager(limits({"scope": "model:p/a", "tpm": 13}))
    register(mm, p)
    async with mm:
        resp = await mm.complete(PROMPT)
        assert resp.model == "p/b"
        assert [(a.model_id, a.outcome) for a in resp.attempts] == [("p/b", "ok")]
        why = ("tpm limit 13 on model:p/a is below the 14 tokens this attempt needs at worst "
               "(its prompt plus the output cap)")
        assert resp.decision.excluded == {"p/a": why}
        assert f"p/a: {why}" in resp.decision.explain()
        assert p.calls["a"] == 0
        # a request that fits is ranked as before
        small = AIRequest.from_prompt("hello there", max_tokens=9)
        assert {c.card.id for c in mm.rank(request=small).candidates} == {"p/a", "p/b"}
    p = provider("p", card("a", price=("0.1", "0.1")), card("b", max_output_tokens=5))
    p.default = Reply("x")
    mm = squirrel_manager(limits({"scope": "key:*", "tpm": 13}))
    register(mm, p)
    async with mm:
        resp = await mm.complete(AIRequest.from_prompt("hello there", max_tokens=10,
                                                       budget_key="k"))
        assert resp.model == "p/b"  # its worst case: 4 + 5 tokens


@pytest.mark.parametrize(("entry", "kind"), [({"rpm": 0}, "rpm"), ({"tpm": 0}, "tpm"),
                                             ({"max_concurrent": 0}, "max_concurrent")])
async def test_a_zero_limit_on_the_callers_key_is_explained_and_refused(
        squirrel_manager, entry: dict[str, int], kind: str) -> None:
    """A 0 on a caller's key refuses that caller on every model: each is left out naming the
    limit, and the request ends with RateLimitTooSmall (never retryable), not with "no model
    meets the requirements". Before: ranked as if nothing applied, and ``max_concurrent = 0``
    was even a RateLimitExceeded that max_wait waited on."""
    p = two_models()
    p.default = Reply("x")
    mm = squirrel_manager(limits({"scope": "key:batch", **entry}, max_wait=30.0))
    register(mm, p)
    async with mm:
        req = AIRequest.from_prompt("hello there", max_tokens=10, budget_key="batch")
        decision = mm.rank(request=req)
        assert not decision.candidates
        assert set(decision.excluded) == {"p/a", "p/b"}
        assert all(why.startswith(f"{kind} limit 0 on key:batch is below the ")
                   for why in decision.excluded.values()), decision.excluded
        with anyio.fail_after(20), pytest.raises(RateLimitTooSmall) as info:
            await mm.complete(req)
        assert (info.value.scope, info.value.limit, info.value.retry_in) == ("key:batch", 0,
                                                                             None)
        assert p.calls["a"] == p.calls["b"] == 0
        # another caller is not concerned
        other = AIRequest.from_prompt("hello there", max_tokens=10, budget_key="web")
        assert (await mm.complete(other)).model == "p/a"


async def test_only_configured_limits_decide_a_fit_never_the_windows_usage(
        squirrel_manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit depends on the configuration and the request alone: a model whose window is
    full is not "too small" (the limiter's refusal says when there is room again); and the
    check runs only where a limit could refuse for good (no tpm, no 0: none at all),
    counting the prompt only for a request near a limit (a bound with the tokenizer's slack,
    about 1,100 tokens for a short prompt, passes it)."""
    from squirrel_models.ratefit import RateFit

    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 5}))
    assert mm.selector.unfit is None  # no limit can refuse for good: nothing per request
    p = two_models()
    p.default = Reply("x")
    tpm = RateCharge("model:p/a", "tpm", 3000)
    mm = squirrel_manager(limits({"scope": "model:p/a", "tpm": 3000}))
    register(mm, p)
    async with mm:
        worst = RateFit.worst
        counted: list[str] = []

        def counting(self: RateFit, request: AIRequest, card) -> int:
            counted.append(card.id)
            return worst(self, request, card)

        monkeypatch.setattr(RateFit, "worst", counting)
        first = [(c.card.id, c.score) for c in mm.rank(request=PROMPT).candidates]
        assert counted == [] and [mid for mid, _ in first] == ["p/a", "p/b"]
        await mm.limiter.store.reserve([tpm], 2990, ttl=60)  # the window is all but full
        assert [(c.card.id, c.score) for c in mm.rank(request=PROMPT).candidates] == first
        big = AIRequest.from_prompt("hello there", max_tokens=2996)
        assert "p/a" not in mm.rank(request=big).excluded  # above 3,000 by its bound: counted,
        assert counted == ["p/a"]                         # 4 + 2,996 fits
        bigger = AIRequest.from_prompt("hello there", max_tokens=2997)
        assert mm.rank(request=bigger).excluded["p/a"] == (
            "tpm limit 3,000 on model:p/a is below the 3,001 tokens this attempt needs at "
            "worst (its prompt plus the output cap)")


async def test_a_reload_that_raises_a_limit_lets_the_model_back(squirrel_manager) -> None:
    p = two_models()
    p.default = Reply("x")
    mm = squirrel_manager(limits({"scope": "model:p/a", "tpm": 13}))
    register(mm, p)
    async with mm:
        assert "p/a" in mm.rank(request=PROMPT).excluded
        await mm.reload({**limits({"scope": "model:p/a", "tpm": 14})})
        register(mm, p)
        assert mm.rank(request=PROMPT).chosen.card.id == "p/a"
