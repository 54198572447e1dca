"""Load spread among equivalent candidates: near-equal scores share the traffic (least in
flight, or weighted by headroom), the draw is seeded and recorded in the decision."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from squirrel_models import AIRequest, ConfigError
from squirrel_models.config import load_config
from squirrel_models.ratelimit import UpstreamLimits
from squirrel_models.testing import Reply

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello there", max_tokens=10)


def deployments(n: int = 10):
    """One model at one price behind n providers (keys, regions, servers)."""
    return [provider(f"d{i}", card("m", f"d{i}", price=("1", "2"))) for i in range(n)]


def make(squirrel_manager, providers, **scoring):
    mm = squirrel_manager({"scoring": scoring} if scoring else None)
    for p in providers:
        for c in p.models:
            mm.register_model(c, p)
    return mm


async def test_two_hundred_requests_over_ten_identical_deployments_are_shared(
        squirrel_manager) -> None:
    ps = deployments()
    async with make(squirrel_manager, ps, spread_seed=14) as mm:
        got = Counter([(await mm.complete(PROMPT)).model for _ in range(200)])
    assert len(got) == 10, got  # every deployment takes part
    assert max(got.values()) <= 40, got  # none takes the lion's share (uniform: ~20 each)
    assert sum(p.calls["m"] for p in ps) == 200


async def test_the_draw_is_recorded_and_reproducible(squirrel_manager) -> None:
    runs = []
    for _ in range(2):
        async with make(squirrel_manager, deployments(), spread_seed=99) as mm:
            resps = [await mm.complete(PROMPT) for _ in range(20)]
        runs.append([r.model for r in resps])
        d = resps[0].decision
        assert d.spread is not None
        assert d.spread.seed == 99 and d.spread.by == "in_flight"
        assert d.spread.chosen == resps[0].model == d.chosen.card.id
        assert len(d.spread.group) == 10
        assert "10 candidates within 0 of the best share the load" in d.explain()
        assert "drew " + resps[0].model in d.reason()
        assert d.to_dict()["spread"]["chosen"] == resps[0].model
    assert runs[0] == runs[1]  # same seed, same requests: same draws
    assert len(set(runs[0])) > 1


async def test_a_clear_winner_is_not_spread(squirrel_manager) -> None:
    cheap = provider("c", card("m", "c", price=("0.1", "0.2")))
    ps = [cheap, *deployments(3)]
    async with make(squirrel_manager, ps, spread_seed=1) as mm:
        resps = [await mm.complete(PROMPT) for _ in range(20)]
    assert {r.model for r in resps} == {"c/m"}
    assert resps[0].decision.spread is None


async def test_spread_off_ranks_strictly(squirrel_manager) -> None:
    async with make(squirrel_manager, deployments(), spread=False) as mm:
        got = {(await mm.complete(PROMPT)).model for _ in range(30)}
    assert got == {"d0/m"}


async def test_least_in_flight_fills_each_deployment_once(squirrel_manager) -> None:
    ps = deployments(5)
    for p in ps:
        p.default = Reply("slow", delay=0.3)
    async with make(squirrel_manager, ps, spread_seed=3) as mm:
        models: list[str] = []

        async def one() -> None:
            models.append((await mm.complete(PROMPT)).model)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
                await anyio.sleep(0.01)
    assert sorted(models) == [f"d{i}/m" for i in range(5)]


async def test_headroom_weights_the_draw(squirrel_manager) -> None:
    ps = deployments(2)
    async with make(squirrel_manager, ps, spread_seed=5, spread_by="headroom") as mm:
        # d0 announced 1 request left of 100: it is nearly full
        mm.limiter.observe(ps[0].models[0], UpstreamLimits(requests_limit=100,
                                                           requests_remaining=1,
                                                           requests_reset=60.0))
        got = Counter([(await mm.complete(PROMPT)).model for _ in range(40)])
        d = (await mm.complete(PROMPT)).decision
    assert got["d0/m"] <= 1 and got["d1/m"] >= 39
    assert d.spread is None or d.spread.by == "headroom"


@pytest.mark.parametrize(("scoring", "field"), [
    ({"spread_margin": -0.1}, "scoring.spread_margin"),
    ({"spread_margin": 2}, "scoring.spread_margin"),
    ({"spread_by": "luck"}, "scoring.spread_by"),
    ({"spread_seed": "x"}, "scoring.spread_seed"),
    ({"spread": 1}, "scoring.spread"),
])
def test_bad_spread_settings_name_the_field(scoring: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"scoring": scoring})
    assert info.value.field == field


async def test_different_models_that_score_alike_keep_their_order(squirrel_manager) -> None:
    """Without a margin, only deployments of one model share: two different models with
    identical cards stay in id order; with a margin they share too."""
    p = provider("p", card("a"), card("b"))
    async with make(squirrel_manager, [p], spread_seed=2) as mm:
        got = {(await mm.complete(PROMPT)).model for _ in range(20)}
    assert got == {"p/a"}
    p = provider("p", card("a"), card("b"))
    async with make(squirrel_manager, [p], spread_seed=2, spread_margin=0.001) as mm:
        got = {(await mm.complete(PROMPT)).model for _ in range(20)}
    assert got == {"p/a", "p/b"}
