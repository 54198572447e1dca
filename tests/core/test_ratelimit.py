"""Rate limits in the request flow: configuration, admission (rpm, tpm, concurrency per model,
provider and key), selection leaving limited models out with the reason, waiting within the
deadline, settlement and release, and what upstreams announce (headers, out of credit)."""

from __future__ import annotations

import math
import time

import anyio
import pytest
from squirrel_models import (
    AIRequest,
    ConfigError,
    InvalidRequest,
    RateLimit,
    RateLimitExceeded,
    RateLimitTooSmall,
    ServerError,
)
from squirrel_models.config import load_config
from squirrel_models.ratelimit import RateCharge, UpstreamLimits, rate_charges_for
from squirrel_models.testing import Fail, Hang, Reply, StreamReply
from squirrel_models.upstream import error_from_status

from ..support.stalls import loop_stalls
from .helpers import card, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def limits(*entries: dict[str, object], **extra: object) -> dict[str, object]:
    return {"rate_limits": {"limits": list(entries), **extra}}


def two_models():
    """a is cheaper (ranked first), b is the alternative."""
    return provider("p", card("a", price=("0.1", "0.1")), card("b", price=("1", "1")))


def register(mm, *providers) -> None:
    for p in providers:
        for c in p.models:
            mm.register_model(c, p)


async def usage_of(mm, *charges: RateCharge) -> list[int]:
    return [u.used for u in await mm.limiter.store.usage(charges)]


# --- configuration ------------------------------------------------------------------------


def test_limits_load_with_defaults() -> None:
    cfg = load_config(limits({"scope": "model:p/a", "rpm": 60, "tpm": 1000, "max_concurrent": 2}))
    (lim,) = cfg.rate_limits.limits
    assert (lim.scope, lim.rpm, lim.tpm, lim.max_concurrent) == ("model:p/a", 60, 1000, 2)
    rl = load_config({}).rate_limits
    assert (rl.store, rl.limits, rl.max_wait, rl.upstream, rl.quota_cooldown, rl.lease_ttl) == (
        "memory", (), 0.0, True, 3600.0, None)


@pytest.mark.parametrize(("entry", "field"), [
    ({"scope": "model:p/a", "rpm": -1}, "rate_limits.limits[0].rpm"),
    ({"scope": "model:p/a", "rpm": 1.5}, "rate_limits.limits[0].rpm"),
    ({"scope": "model:p/a", "tpm": True}, "rate_limits.limits[0].tpm"),
    ({"scope": "model:p/a", "tpm": "100"}, "rate_limits.limits[0].tpm"),
    ({"scope": "model:p/a", "max_concurrent": 10**13}, "rate_limits.limits[0].max_concurrent"),
    ({"scope": "team", "rpm": 1}, "rate_limits.limits[0].scope"),
    ({"scope": "model:p/a"}, "rate_limits.limits[0].rpm"),
    ({"scope": "model:p/a", "rpm": 1, "rps": 3}, "rate_limits.limits[0].rps"),
])
def test_bad_limits_name_the_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(limits(entry))
    assert info.value.field == field


@pytest.mark.parametrize("entry", [{"scope": "global", "rpm": 0},
                                   {"scope": "provider:p", "tpm": 0},
                                   {"scope": "model:p/a", "rpm": 5, "max_concurrent": 0}])
def test_a_zero_limit_where_no_model_could_pass_is_refused(entry: dict[str, object]) -> None:
    """Before: ``rpm = 0`` on ``global`` loaded; ``squirrel select --explain`` ranked every
    model without a word and each request then failed with RateLimitTooSmall. 0 is often meant
    as "no limit": it is refused at start-up, naming the field and what to write instead."""
    name = next(k for k, v in entry.items() if v == 0)
    with pytest.raises(ConfigError) as info:
        load_config(limits(entry))
    assert info.value.field == f"rate_limits.limits[0].{name}"
    assert f"leave {name} unset for no limit" in str(info.value)
    assert "enabled = false" in str(info.value)


def test_a_zero_limit_on_a_key_still_refuses_that_key() -> None:
    """A caller's key is the one scope where 0 means something: refuse that caller."""
    cfg = load_config(limits({"scope": "key:blocked", "rpm": 0}, {"scope": "key:*", "rpm": 5}))
    charges = rate_charges_for(cfg.rate_limits.limits, provider="p", model_id="p/a",
                               key="blocked")
    assert [(c.scope, c.kind, c.limit) for c in charges] == [("key:blocked", "rpm", 0)]


@pytest.mark.parametrize(("extra", "field"), [
    ({"max_wait": -1}, "rate_limits.max_wait"),
    ({"max_wait": math.inf}, "rate_limits.max_wait"),
    ({"quota_cooldown": -5}, "rate_limits.quota_cooldown"),
    ({"lease_ttl": 0}, "rate_limits.lease_ttl"),
    ({"upstream": "yes"}, "rate_limits.upstream"),
])
def test_bad_settings_name_the_field(extra: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(limits(**extra))
    assert info.value.field == field


@pytest.mark.parametrize(("config", "needed"), [({"timeout": 10}, "15 s"),
                                                ({"timeout": 10, "attempt_timeout": 30}, "35 s")])
def test_a_lease_shorter_than_a_request_is_refused(config: dict[str, object], needed: str) -> None:
    """Before: accepted, and a slot expired while its request still ran, so a second request
    ran beside it on a ``max_concurrent = 1`` model."""
    cfg = {**config, **limits({"scope": "model:p/a", "max_concurrent": 1}, lease_ttl=0.5)}
    with pytest.raises(ConfigError, match=needed) as info:
        load_config(cfg)
    assert info.value.field == "rate_limits.lease_ttl"
    assert load_config({**cfg, "rate_limits": {**cfg["rate_limits"], "lease_ttl": 40}})


async def test_unknown_store_names_the_field(squirrel_manager) -> None:
    with pytest.raises(ConfigError) as info:
        squirrel_manager({"rate_limits": {"store": "nope"}})
    assert info.value.field == "rate_limits.store"
    assert "memory" in str(info.value)


def test_charges_follow_scopes_and_keys() -> None:
    lims = [RateLimit("global", rpm=1000), RateLimit("provider:p", tpm=50_000),
            RateLimit("model:p/a", rpm=60, max_concurrent=4), RateLimit("model:p/a", rpm=30),
            RateLimit("key:*", rpm=10), RateLimit("key:vip", rpm=100, tpm=9)]
    got = rate_charges_for(lims, provider="p", model_id="p/a", key="team")
    assert [(c.scope, c.kind, c.limit) for c in got] == [
        ("global", "rpm", 1000), ("provider:p", "tpm", 50_000), ("model:p/a", "rpm", 30),
        ("model:p/a", "concurrent", 4), ("key:team", "rpm", 10)]
    # key:vip replaces key:* for that key, kind by kind
    got = rate_charges_for(lims, provider="q", model_id="q/x", key="vip")
    assert [(c.scope, c.kind, c.limit) for c in got] == [
        ("global", "rpm", 1000), ("key:vip", "rpm", 100), ("key:vip", "tpm", 9)]
    assert [c.scope for c in rate_charges_for(lims, provider="q", model_id="q/x", key=None)] == [
        "global"]


# --- admission ----------------------------------------------------------------------------


async def test_a_model_at_its_rpm_limit_sends_the_request_to_the_next_at_once(
        squirrel_manager) -> None:
    p = two_models()
    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 2}))
    register(mm, p)
    async with mm:
        for _ in range(2):
            assert (await mm.complete(PROMPT)).model == "p/a"
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            third = await mm.complete(PROMPT)
            assert stalls.elapsed(t0) < 1.0, stalls  # no waiting on the limited model
        assert third.model == "p/b"
        assert [(a.model_id, a.outcome) for a in third.attempts] == [("p/a", "refused"),
                                                                     ("p/b", "ok")]
        assert isinstance(third.attempts[0].error, RateLimitExceeded)
        # From now on selection sees it: left out with the reason, no refused attempt.
        fourth = await mm.complete(PROMPT)
        assert [(a.model_id, a.outcome) for a in fourth.attempts] == [("p/b", "ok")]
        why = fourth.decision.excluded["p/a"]
        assert why.startswith("rpm limit reached on model:p/a (2/2), room again in ")
        assert 50 < float(why.rsplit(" in ", 1)[1].removesuffix(" s")) <= 60
        assert "p/a: rpm limit reached" in mm.rank().explain()
    assert p.calls == {"a": 2, "b": 2}


async def test_a_provider_limit_leaves_out_all_its_models(squirrel_manager) -> None:
    p, q = two_models(), provider("q", card("c", "q", price=("5", "5")))
    mm = squirrel_manager(limits({"scope": "provider:p", "rpm": 1}))
    register(mm, p, q)
    async with mm:
        assert (await mm.complete(PROMPT)).model == "p/a"
        second = await mm.complete(PROMPT)
        assert second.model == "q/c"
        third = await mm.complete(PROMPT)
        assert {"p/a", "p/b"} <= set(third.decision.excluded)
        assert third.decision.excluded["p/b"].startswith("rpm limit reached on provider:p")


async def test_tpm_reserves_the_worst_case_and_settles_to_the_real_count(squirrel_manager
                                                                         ) -> None:
    p = provider("p", card("a"))
    p.default = Reply("one two three")
    tpm = RateCharge("model:p/a", "tpm", 30)
    mm = squirrel_manager(limits({"scope": "model:p/a", "tpm": 30}))
    register(mm, p)
    async with mm:
        seen: list[int] = []
        # Long enough that a watcher kept off the CPU for a while still reads it in flight.
        p.script("a", Reply("one two three", delay=1.5))

        async def watch() -> None:
            # The provider is called after the admission: read the charge while it answers
            # (a fixed sleep read it too early or too late on a busy machine).
            with anyio.fail_after(10):
                while not p.calls["a"]:
                    await anyio.sleep(0.005)
            seen.extend(await usage_of(mm, tpm))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await mm.complete(PROMPT)
        # in flight: the worst case (4 prompt tokens + 10 of output cap); after: 4 + 3
        assert seen == [14]
        assert await usage_of(mm, tpm) == [7]
        await mm.complete(PROMPT)
        await mm.complete(PROMPT)
        # 21 used: a worst case of 14 no longer fits 30 (it would have after two, unsettled)
        with pytest.raises(RateLimitExceeded) as info:
            await mm.complete(PROMPT)
        assert (info.value.kind, info.value.requested) == ("tpm", 14)
        assert await usage_of(mm, tpm) == [21]


async def test_max_concurrent_spreads_parallel_requests(squirrel_manager) -> None:
    p = two_models()
    p.default = Reply("slow", delay=0.3)
    slot = RateCharge("model:p/a", "concurrent", 1)
    mm = squirrel_manager(limits({"scope": "model:p/a", "max_concurrent": 1}))
    register(mm, p)
    async with mm:
        models: list[str] = []

        async def one() -> None:
            models.append((await mm.complete(PROMPT)).model)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert sorted(models) == ["p/a", "p/b", "p/b"]
        assert await usage_of(mm, slot) == [0]
        assert (await mm.complete(PROMPT)).model == "p/a"  # the slot came back


async def test_a_key_limit_refuses_at_once_without_waiting(squirrel_manager) -> None:
    p = two_models()
    cfg = limits({"scope": "key:*", "rpm": 1})
    mm = squirrel_manager(cfg)
    register(mm, p)
    async with mm:
        team = AIRequest.from_prompt("hi", max_tokens=5, budget_key="team")
        await mm.complete(team)
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            with pytest.raises(RateLimitExceeded) as info:
                await mm.complete(team)
            assert stalls.elapsed(t0) < 1.0, stalls
        assert (info.value.scope, info.value.kind) == ("key:team", "rpm")
        assert 55 < info.value.retry_in <= 60
        # another key has its own count
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=5, budget_key="other"))


async def test_waiting_for_room_is_allowed_and_never_passes_the_deadline(squirrel_manager
                                                                         ) -> None:
    p = provider("p", card("a"))
    p.default = Reply("slow", delay=0.4)
    req = AIRequest.from_prompt("hi", max_tokens=5, budget_key="team")
    cfg = limits({"scope": "key:team", "max_concurrent": 1}, max_wait=5.0)
    mm = squirrel_manager(cfg)
    register(mm, p)
    async with mm:
        results: list[str] = []

        async def one() -> None:
            results.append((await mm.complete(req)).text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.05)
            tg.start_soon(one)  # waits for the slot, then goes
        assert results == ["slow", "slow"]

        # With a deadline shorter than the wait: refused before the deadline, not after it.
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.05)
            async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
                t0 = time.monotonic()
                with pytest.raises(RateLimitExceeded):
                    await mm.complete(req, timeout=0.2)
                assert stalls.elapsed(t0) < 0.2 + 0.15, stalls


async def test_without_max_wait_a_refusal_is_immediate(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.default = Reply("slow", delay=30)
    req = AIRequest.from_prompt("hi", max_tokens=5, budget_key="team")
    mm = squirrel_manager(limits({"scope": "key:team", "max_concurrent": 1}))
    register(mm, p)
    async with mm, anyio.create_task_group() as tg:
        tg.start_soon(mm.complete, req)
        # The first holds the slot once its provider is called (after a fixed 0.05 s, a
        # loaded machine could still be admitting it: the second took the slot and the first
        # was refused), and until the test ends (it answered after 0.3 s before).
        while not p.calls["a"]:
            await anyio.sleep(0.005)
        with pytest.raises(RateLimitExceeded) as info:
            await mm.complete(req)
        assert info.value.retry_in is None
        assert "room when a request in flight ends" in str(info.value)
        tg.cancel_scope.cancel()


async def test_all_candidates_limited_is_a_typed_refusal(squirrel_manager) -> None:
    p = provider("p", card("a"))
    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 1}))
    register(mm, p)
    async with mm:
        await mm.complete(PROMPT)
        with pytest.raises(RateLimitExceeded):
            await mm.complete(PROMPT)  # refused at admission
        with pytest.raises(RateLimitExceeded) as info:
            await mm.complete(PROMPT)  # now left out by selection: the same typed error
        assert info.value.model_id == "p/a"
        assert 55 < info.value.retry_in <= 60


async def test_selection_waits_for_a_limited_model_when_allowed(squirrel_manager) -> None:
    p = provider("p", card("a"))
    cfg = limits({"scope": "model:p/a", "rpm": 1}, max_wait=0.5)
    mm = squirrel_manager(cfg)
    register(mm, p)
    async with mm:
        mm.limiter.observe(p.models[0], UpstreamLimits(retry_after=0.3))
        async with loop_stalls() as stalls:  # time another process had the CPU is forgiven
            t0 = time.monotonic()
            assert (await mm.complete(PROMPT)).model == "p/a"
            assert time.monotonic() - t0 > 0.25  # it waited
            assert stalls.elapsed(t0) < 1.0, stalls  # max_wait (0.5 s) and the work around it


# --- settle and release -------------------------------------------------------------------


async def test_an_upstream_error_counts_the_request_but_no_tokens(squirrel_manager) -> None:
    p = two_models()
    p.script("a", Fail(ServerError("boom", status_code=500)))
    charges = [RateCharge("model:p/a", k, 100) for k in ("rpm", "tpm", "concurrent")]
    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 100, "tpm": 100,
                                        "max_concurrent": 100}))
    register(mm, p)
    async with mm:
        assert (await mm.complete(PROMPT)).model == "p/b"
        assert await usage_of(mm, *charges) == [1, 0, 0]


async def test_a_refusal_after_admission_releases_everything(squirrel_manager) -> None:
    p = provider("p", card("a", price=("1000", "1000")))
    charges = [RateCharge("model:p/a", k, 100) for k in ("rpm", "tpm", "concurrent")]
    cfg = {**limits({"scope": "model:p/a", "rpm": 100, "tpm": 100, "max_concurrent": 100}),
           "budget": {"limits": [{"scope": "global", "limit": "0.000001"}]}}
    mm = squirrel_manager(cfg)
    register(mm, p)
    async with mm:
        with pytest.raises(Exception) as info:
            await mm.complete(PROMPT)
        assert type(info.value).__name__ == "BudgetExceeded"
        assert await usage_of(mm, *charges) == [0, 0, 0]


async def test_cancellation_and_deadline_free_the_slot(squirrel_manager) -> None:
    p = provider("p", card("a"))
    slot = RateCharge("model:p/a", "concurrent", 1)
    mm = squirrel_manager(limits({"scope": "model:p/a", "max_concurrent": 1}))
    register(mm, p)
    async with mm:
        p.script("a", Hang())
        with anyio.move_on_after(0.1):
            await mm.complete(PROMPT)
        assert await usage_of(mm, slot) == [0]
        p.script("a", Hang())
        with pytest.raises(Exception) as info:
            await mm.complete(PROMPT, timeout=0.1)
        assert type(info.value).__name__ == "DeadlineExceeded"
        assert await usage_of(mm, slot) == [0]
        assert mm.limiter.store.open_leases == 0


async def test_a_stream_settles_its_lease_with_what_it_used(squirrel_manager) -> None:
    p = provider("p", card("a"))
    p.script("a", StreamReply(["one ", "two"]))
    charges = [RateCharge("model:p/a", "tpm", 100), RateCharge("model:p/a", "concurrent", 5)]
    mm = squirrel_manager(limits({"scope": "model:p/a", "tpm": 100,
                                        "max_concurrent": 5}))
    register(mm, p)
    async with mm:
        async with mm.stream(PROMPT) as s:
            async for _ in s:
                assert await usage_of(mm, *charges) == [14, 1]
        assert await usage_of(mm, *charges) == [s.response.usage.input_tokens
                                                + s.response.usage.output_tokens, 0]


# --- what the upstream says ---------------------------------------------------------------


async def test_announced_headroom_is_respected_without_configuration(squirrel_manager) -> None:
    p = two_models()
    p.script("a", Reply("ok", rate_limits=UpstreamLimits(requests_limit=100, requests_remaining=2,
                                                         requests_reset=30.0)))
    mm = squirrel_manager()
    register(mm, p)
    async with mm:
        got = [(await mm.complete(PROMPT)).model for _ in range(4)]
        # the answer said 2 left: two more go to a, then it is left out until the reset
        assert got == ["p/a", "p/a", "p/a", "p/b"]
        why = mm.rank().excluded["p/a"]
        assert why.startswith("rpm limit reached on model:p/a (announced upstream) (100/100)")


async def test_announced_tokens_left_refuse_a_larger_worst_case(squirrel_manager) -> None:
    p = two_models()
    p.script("a", Reply("ok", rate_limits=UpstreamLimits(tokens_remaining=20, tokens_reset=10.0)))
    mm = squirrel_manager()
    register(mm, p)
    async with mm:
        assert (await mm.complete(PROMPT)).model == "p/a"
        assert (await mm.complete(PROMPT)).model == "p/a"  # 14 of 20
        third = await mm.complete(PROMPT)
        assert third.model == "p/b"
        assert third.attempts[0].error.source == "upstream"


async def test_an_announced_token_limit_below_the_worst_case_never_fits(squirrel_manager
                                                                         ) -> None:
    p = two_models()
    p.script("a", Reply("ok", rate_limits=UpstreamLimits(tokens_limit=13, tokens_remaining=13,
                                                         tokens_reset=10.0)))
    mm = squirrel_manager()
    register(mm, p)
    async with mm:
        assert (await mm.complete(AIRequest.from_prompt("hello there", max_tokens=2))
                ).model == "p/a"
        resp = await mm.complete(PROMPT)  # 14 tokens at worst: never within 13
        assert resp.model == "p/b"
        err = resp.attempts[0].error
        assert isinstance(err, RateLimitTooSmall) and err.source == "upstream"
        assert "tpm limit 13 on model:p/a (announced upstream) is below the 14" in str(err)
        assert "p/a" not in mm.rank().excluded  # smaller requests still go to it


async def test_announced_tokens_left_below_the_worst_case_say_so(squirrel_manager) -> None:
    """Only what is left announced (no limit): the refusal said "tpm limit 10 ... is below
    the 14 tokens this attempt needs", a limit nobody announced, as if it could never fit."""
    p = two_models()
    p.script("a", Reply("ok", rate_limits=UpstreamLimits(tokens_remaining=10, tokens_reset=10.0)))
    mm = squirrel_manager()
    register(mm, p)
    async with mm:
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=2))
        resp = await mm.complete(PROMPT)
        assert resp.model == "p/b"
        err = resp.attempts[0].error
        assert isinstance(err, RateLimitExceeded) and not err.never
        assert str(err).startswith("tpm limit reached on model:p/a (announced upstream): 10 "
                                   "tokens left until its reset, 14 needed, room again in ")
        assert mm.rank().excluded["p/a"].startswith("tpm limit reached on model:p/a")


async def test_upstream_can_be_ignored(squirrel_manager) -> None:
    p = two_models()
    p.script("a", Reply("ok", rate_limits=UpstreamLimits(requests_remaining=0,
                                                         requests_reset=30.0)))
    mm = squirrel_manager({"rate_limits": {"upstream": False}})
    register(mm, p)
    async with mm:
        assert [(await mm.complete(PROMPT)).model for _ in range(2)] == ["p/a", "p/a"]


async def test_out_of_credit_cools_the_model_down_for_long(squirrel_manager) -> None:
    p = two_models()
    quota = error_from_status(429, {}, {"error": {"code": "insufficient_quota",
                                                  "message": "You exceeded your quota"}})
    p.script("a", Fail(quota))
    mm = squirrel_manager({"rate_limits": {"quota_cooldown": 900}})
    register(mm, p)
    async with mm:
        first = await mm.complete(PROMPT)
        assert first.model == "p/b"
        for _ in range(3):
            resp = await mm.complete(PROMPT)
            assert [a.model_id for a in resp.attempts] == ["p/b"]  # never retried first
        why = mm.rank().excluded["p/a"]
        assert why.startswith("out of credit upstream (HTTP 429: insufficient quota), room "
                              "again in ")
        assert 890 < float(why.rsplit(" in ", 1)[1].removesuffix(" s").replace(",", "")) <= 900
        assert "out of credit" in mm.rank().explain()
    assert p.calls["a"] == 1


async def test_a_402_carries_its_headers_and_cools_down(squirrel_manager) -> None:
    err = error_from_status(402, {"x-ratelimit-remaining-requests": "5"}, b"{}")
    assert err.out_of_credit and err.rate_limits.requests_remaining == 5
    p = two_models()
    p.script("a", Fail(err))
    mm = squirrel_manager()
    register(mm, p)
    async with mm:
        assert (await mm.complete(PROMPT)).model == "p/b"
        assert "out of credit" in mm.rank().excluded["p/a"]


async def test_reload_changes_limits_and_keeps_counts(squirrel_manager) -> None:
    p = provider("p", card("a"))
    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 1}))
    register(mm, p)
    async with mm:
        await mm.complete(PROMPT)
        await mm.reload(limits({"scope": "model:p/a", "rpm": 3}))
        await mm.complete(PROMPT)
        await mm.complete(PROMPT)
        with pytest.raises(RateLimitExceeded):
            await mm.complete(PROMPT)
        with pytest.raises(ConfigError) as info:
            await mm.reload({"rate_limits": {"store": "other"}})
        assert info.value.field == "rate_limits.store"


async def test_a_scope_naming_no_model_is_a_config_error(squirrel_manager) -> None:
    mm = squirrel_manager(limits({"scope": "model:p/nope", "rpm": 1}))
    register(mm, two_models())
    with pytest.raises(ConfigError) as info:
        await mm.start()
    assert info.value.field == "rate_limits.limits[0].scope"
    assert "no model named 'p/nope'" in str(info.value)


async def test_proof_concurrent_tasks_never_pass_the_limits(squirrel_manager) -> None:
    """16 tasks sending requests for 1.5 s (answers, 500s, slow answers cut by their own
    timeouts, streams, cancellations) against rpm, tpm and max_concurrent on one model: what
    reached the upstream stays within each limit, and nothing is held afterwards."""
    import random

    p = provider("p", card("a"))
    rng = random.Random(12)
    p.script("a", *[rng.choice([Reply("one two three", delay=rng.random() / 50),
                                Fail(ServerError("x", status_code=500)),
                                Reply("slow", delay=0.5),
                                StreamReply(("x ", "y"), delay=0.01)]) for _ in range(2000)])
    charges = [RateCharge("model:p/a", "rpm", 40), RateCharge("model:p/a", "tpm", 600),
               RateCharge("model:p/a", "concurrent", 3)]
    mm = squirrel_manager(limits({"scope": "model:p/a", "rpm": 40, "tpm": 600,
                                  "max_concurrent": 3}))
    register(mm, p)
    refused = 0
    async with mm:
        stop = anyio.current_time() + 1.5

        async def worker(w: int) -> None:
            nonlocal refused
            while anyio.current_time() < stop:
                req = AIRequest.from_prompt(f"task {w}", max_tokens=10)
                with anyio.move_on_after(rng.choice([0.05, 5])):
                    try:
                        if w % 3:
                            await mm.complete(req, timeout=2)
                        else:
                            async with mm.stream(req, timeout=2) as s:
                                async for _ in s:
                                    pass
                    except RateLimitExceeded:
                        refused += 1
                        await anyio.sleep(0.01)
                    except Exception:
                        pass
                    assert (await usage_of(mm, charges[2]))[0] <= 3

        async with anyio.create_task_group() as tg:
            for w in range(16):
                tg.start_soon(worker, w)
        rpm, tpm, slots = await usage_of(mm, *charges)
        assert refused > 0
        assert sum(p.calls.values()) <= 40  # every upstream call was admitted in this window
        assert rpm <= 40 and tpm <= 600
        assert p.max_in_flight <= 3
        assert slots == 0 and mm.limiter.store.open_leases == 0


@pytest.mark.parametrize("retry_after", ["86400", "inf", "nan"])
async def test_retry_after_holds_a_model_no_longer_than_max_cooldown(squirrel_manager,
                                                                     retry_after: str) -> None:
    # [circuit_breaker] max_cooldown is "the longest a Retry-After holds a model": one 429
    # saying "come back tomorrow" (or "in infinity seconds") left the model out of every
    # ranking of the process for that long, with a reason claiming its limit was 0.
    p = provider("p", card("a"))
    p.script("a", Fail(error_from_status(429, {"retry-after": retry_after},
                                         {"error": {"message": "slow down"}})), Reply("ok"))
    clock = [1000.0]
    mm = squirrel_manager({"circuit_breaker": {"base_cooldown": 1, "max_cooldown": 2},
                           "fallback": {"max_attempts": 1}})
    register(mm, p)
    async with mm:
        mm.limiter.clock = mm.breakers.clock = lambda: clock[0]
        with pytest.raises(Exception) as info:
            await mm.complete(PROMPT)
        assert type(info.value).__name__ in ("RateLimited", "FallbackExhausted")
        why = mm.rank().excluded.get("p/a", "")
        assert "limit 0" not in why
        if retry_after == "86400":
            assert why.startswith("the upstream asked to wait (Retry-After)"), why
        clock[0] += 2.5
        assert mm.rank().excluded == {}
        assert (await mm.complete(PROMPT)).model == "p/a"



async def test_a_lease_lives_as_long_as_its_requests_own_timeout(squirrel_manager) -> None:
    """A request given a longer timeout than the configuration's (``complete(...,
    timeout=900)``) held its concurrency slot by a lease made for the configured timeout
    (600 s): past it the slot came back while the request was still in flight, and
    ``max_concurrent = 1`` let a second request run beside it. The budget's reservation
    already lived as long as the request's own timeout; the lease now does too."""
    p = provider("p", card("a"))
    p.default = Hang()
    slot = RateCharge("model:p/a", "concurrent", 1)
    mm = squirrel_manager({**limits({"scope": "model:p/a", "max_concurrent": 1}), "timeout": 30.0})
    register(mm, p)
    store = mm.limiter.store
    fake = [1000.0]
    async with mm:
        store.clock = lambda: fake[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: mm.complete(PROMPT, timeout=900.0))
            with anyio.fail_after(10):
                while (await store.usage([slot]))[0].used == 0:
                    await anyio.sleep(0.01)
            fake[0] += 800.0  # the request is still in flight, within its 900 s
            assert await store.reconcile() == 0  # its lease lives until its deadline and after
            with pytest.raises(RateLimitExceeded):
                await mm.complete(PROMPT)
            tg.cancel_scope.cancel()


async def test_a_timeout_longer_than_the_configured_lease_is_refused(squirrel_manager) -> None:
    """``rate_limits.lease_ttl`` is checked against the configured timeout at start-up; a
    request's own longer timeout was taken, and its slot came back while it ran (the budget's
    ``reservation_ttl`` refuses such a timeout: the lease's now does the same)."""
    p = provider("p", card("a"))
    p.default = Hang()
    mm = squirrel_manager({**limits({"scope": "model:p/a", "max_concurrent": 1}, lease_ttl=40.0),
                           "timeout": 30.0})
    register(mm, p)
    async with mm:
        with anyio.fail_after(5), pytest.raises(InvalidRequest) as info:
            await mm.complete(PROMPT, timeout=120.0)
        assert info.value.field == "timeout" and "rate_limits.lease_ttl" in str(info.value)
        with anyio.fail_after(5), pytest.raises(InvalidRequest):
            async with mm.stream(PROMPT, timeout=120.0):
                pass
