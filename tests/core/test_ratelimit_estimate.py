"""An attempt under configured rate limits alone (no budget, no cost ceiling, no recording
metrics) builds no ``Estimate``: a ``tpm`` limit reads the prompt's count and nothing reads
the worst case's cost. What it admits and sends must be what the estimate would have given:
the store charged the counted prompt plus the output cap, the same output cap sent upstream,
whatever the window, the caps and the tokenizer's count (also one above the byte bound's
slack, which takes the estimate's own path). Without a ``tpm`` limit nothing reads the
count: the bound's ceiling is charged and the roomy cap sent, as before."""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import NoOpMeterProvider
from squirrel_models import AIRequest, Message, ModelManager, SquirrelError, TokenCount, hookimpl
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import ScriptedPlugin
from squirrel_models.tokens import ceiling, upper_bound

from .helpers import card, provider


class _Template:
    """Counts a prompt as its words plus ``extra`` tokens of chat template (perhaps far more
    than the byte bound allows for)."""

    def __init__(self, extra: int) -> None:
        self.extra = extra

    @hookimpl(tryfirst=True)
    def count_tokens(self, request: AIRequest | None, text: str | None) -> TokenCount | None:
        if request is None:
            return None
        return TokenCount(sum(len(m.text.split()) for m in request.messages) + self.extra,
                          exact=True, method="template")


@settings(max_examples=150, deadline=None)
@given(words=st.lists(st.integers(0, 60), min_size=1, max_size=4),
       max_tokens=st.one_of(st.none(), st.integers(1, 5000)),
       window=st.sampled_from([64, 300, 4096, 128_000]),
       max_output=st.one_of(st.none(), st.integers(1, 2000)),
       extra=st.sampled_from([0, 3, 2000, 9000]),
       tpm=st.booleans())
def test_what_rate_limits_alone_admit_is_what_the_estimate_gives(
        words: list[int], max_tokens: int | None, window: int, max_output: int | None,
        extra: int, tpm: bool) -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(ScriptedPlugin(), "scripted")
    pm.register(_Template(extra), "template")
    limit = {"scope": "model:p/a", "rpm": 10**9, "max_concurrent": 1000}
    if tpm:
        limit["tpm"] = 10**9
    mm = ModelManager({"rate_limits": {"limits": [limit]}}, plugins=pm,
                      meter_provider=NoOpMeterProvider())
    c = card("a", context_window=window, max_output_tokens=max_output)
    mm.register_model(c, provider("p"))
    request = AIRequest([Message("user", " ".join(["w"] * k) or "x") for k in words],
                        max_tokens=max_tokens)

    async def run() -> Any:
        await mm.start()
        try:
            ctx = mm._prepared(request, None, anyio.current_time() + 60, 60)
            if ctx is None:  # no candidate: the prompt does not fit the window
                return None
            return mm._begin_attempt(ctx, c)
        finally:
            await mm.aclose()

    try:
        begun = anyio.run(run)
    except SquirrelError:
        begun = None  # the prompt does not fit the window: refused before any attempt
    assume(begun is not None)
    estimate, cap, store_tokens, budgeted = begun
    full = mm.tokens.estimate(request, c)
    assert budgeted == ()
    bound = upper_bound(request).tokens
    roomy = mm.tokens.roomy_cap(request, c, bound)
    if tpm or roomy is None:
        assert (cap, store_tokens) == (full.max_output, full.prompt.tokens + full.max_output)
    else:  # nothing reads the count: the bound's ceiling is charged, as before
        assert (cap, store_tokens) == (roomy, ceiling(bound, request) + roomy)
    if estimate is not None:
        assert estimate.max_output == full.max_output
        assert estimate.prompt == full.prompt


@settings(max_examples=200, deadline=None)
@given(rpm=st.one_of(st.none(), st.integers(0, 3)), tpm=st.one_of(st.none(), st.integers(0, 50)),
       slots=st.one_of(st.none(), st.integers(0, 3)), global_tpm=st.one_of(st.none(), st.integers(1, 50)),
       tokens=st.integers(0, 60))
def test_an_attempt_no_limit_can_ever_admit_is_refused_before_the_store(
        rpm: int | None, tpm: int | None, slots: int | None, global_tpm: int | None,
        tokens: int) -> None:
    """The limiter refuses without asking the store exactly the attempts one of the charges
    can never fit (:func:`never_fits`): it now compares the tokens with a figure kept per
    model and key, and checks the charges one by one only above it."""
    from squirrel_models import RateLimit, RateLimitTooSmall
    from squirrel_models.builtins.memory_ratelimit import MemoryRateLimitStore
    from squirrel_models.limiter import RateLimiter
    from squirrel_models.ratelimit import RateLimitConfig, never_fits

    assume(not (rpm is None and tpm is None and slots is None))
    limits = [RateLimit("key:team", rpm=rpm, tpm=tpm, max_concurrent=slots)]
    if global_tpm is not None:
        limits.append(RateLimit("global", tpm=global_tpm))
    limiter = RateLimiter(RateLimitConfig(limits=tuple(limits)), MemoryRateLimitStore(), 60.0)
    c = card("a")
    never = any(never_fits(ch, tokens) for ch in limiter.charges(c, "team"))

    async def admit() -> Any:
        return await limiter.admit(c, tokens, "team", "r1")

    try:
        lease = anyio.run(admit)
    except RateLimitTooSmall:
        assert never
    else:
        assert not never and lease is not None
