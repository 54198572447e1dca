"""The retry backoff's jitter is drawn from the manager's seed (``[scoring] spread_seed``):
the same seed and the same failures give the same delays; without a seed, managers (so
processes) and successive requests get different ones."""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest, ServerError
from squirrel_models.builtins.fallback import Retry
from squirrel_models.testing import Fail, Reply

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello", max_tokens=5)
FAILURES = 3


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every delay the retry strategy chose, in order."""
    seen: list[float] = []
    real = Retry.try_fallback

    async def recording(self: Retry, error: BaseException, ctx: Any) -> Any:
        step = await real(self, error, ctx)
        if step is not None:
            seen.append(step.delay)
        return step

    monkeypatch.setattr(Retry, "try_fallback", recording)
    return seen


async def _run(squirrel_manager: Any, seed: int | None, requests: int = 1) -> None:
    """``requests`` requests to a lone model that fails ``FAILURES`` times (a 500) and then
    answers; the retries are the only way on."""
    p = provider("p", card("a"))
    scoring: dict[str, Any] = {} if seed is None else {"spread_seed": seed}
    cfg = {"scoring": scoring, "timeout": 10.0, "circuit_breaker": {"failure_threshold": 100},
           "fallback": {"max_attempts": FAILURES + 1,
                        "options": {"retry": {"max_retries": FAILURES, "base_delay": 0.002, "max_delay": 0.01}}}}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(p.models[0], p)
        for _ in range(requests):
            p.script("a", *[Fail(ServerError("boom", status_code=500))] * FAILURES, Reply("hi"))
            resp = await mm.complete(PROMPT)
            assert [a.outcome for a in resp.attempts] == ["error"] * FAILURES + ["ok"]


async def test_the_same_seed_and_failures_give_the_same_delays(squirrel_manager, delays) -> None:
    await _run(squirrel_manager, 7, requests=2)
    first = list(delays)
    delays.clear()
    await _run(squirrel_manager, 7, requests=2)
    assert len(first) == 2 * FAILURES and delays == first
    delays.clear()
    await _run(squirrel_manager, 8, requests=2)
    assert delays != first  # another seed, other delays


async def test_without_a_seed_managers_and_requests_differ(squirrel_manager, delays) -> None:
    await _run(squirrel_manager, None, requests=2)
    one = list(delays)
    delays.clear()
    await _run(squirrel_manager, None, requests=2)
    assert one != delays  # another manager (another process): another stream
    assert one[:FAILURES] != one[FAILURES:]  # the second request does not repeat the first's
    for d, n in zip(one, [1, 2, 3] * 2, strict=True):
        assert 0 <= d <= min(0.01, 0.002 * 2 ** (n - 1))  # full jitter within the backoff


async def test_retries_do_not_shift_the_spread_draws(squirrel_manager) -> None:
    """The jitter has its own stream: a seeded run's load-spread draws are the same whether or
    not retries happened in between."""
    from squirrel_models import ModelRequirements

    async def draws(fail: bool) -> list[str]:
        deployments = [provider(n, card("m", provider=n)) for n in ("p1", "p2")]  # one model, twice
        q = provider("q", card("c", provider="q", price=("5", "5")))
        cfg = {"scoring": {"spread_seed": 3}, "fallback": {"options": {"retry": {"base_delay": 0.001}}}}
        out = []
        async with squirrel_manager(cfg) as mm:
            for p in (*deployments, q):
                mm.register_model(p.models[0], p)
            for _ in range(8):
                resp = await mm.complete(PROMPT)
                out.append(resp.decision.spread.chosen)
                if fail:  # a retried request of the lone other model between two draws
                    q.script("c", Fail(ServerError("boom", status_code=500)), Reply("hi"))
                    resp = await mm.complete(PROMPT, ModelRequirements(models=frozenset({"q/c"})))
                    assert len(resp.attempts) == 2
        return out

    seen = await draws(False)
    assert len(set(seen)) == 2 and seen == await draws(True)
