"""Load spread among equivalent candidates: near-equal scores share the traffic (least in
flight, or weighted by headroom), the draw is seeded and recorded in the decision."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
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


def _reference_apply(sp, decision):
    """The draw as the first implementation made it, from the full ranking (sorted), kept
    here as the reference: the spreader now sorts only when it draws."""
    import attrs
    from squirrel_models.decision import _Lazy
    from squirrel_models.spread import SpreadDraw, _card_scores

    lazy = decision._lazy
    if lazy is None or len(lazy.keep) < 2 or len(lazy.order) < 2 or sp.margin < 0:
        return decision
    order, cards = lazy.order, lazy.cards
    quiet = _card_scores(lazy, decision.weights)
    floor = max(quiet[i] for i in order) - sp.margin - 1e-9
    group = sorted(i for i in order if quiet[i] >= floor)
    if len(group) >= 2 and sp.margin == 0:
        members = set(group)
        name = cards[next(i for i in order if i in members)].model
        group = [i for i in group if cards[i].model == name]
    if len(group) < 2:
        return decision
    if sp.by == "headroom":
        weights = [max(sp.headroom(cards[i]), 0.0) for i in group]
        if not any(weights):
            weights = [1.0] * len(group)
    else:
        loads = [sp.in_flight(cards[i].id) for i in group]
        weights = [1.0 if n == min(loads) else 0.0 for n in loads]
    draw = sp._rng.random()
    target, acc, pick = draw * sum(weights), 0.0, group[-1]
    for i, w in zip(group, weights, strict=True):
        acc += w
        if w > 0 and target < acc:
            pick = i
            break
    new_order = [pick, *(i for i in order if i != pick)]
    spread = SpreadDraw(tuple(cards[i].id for i in group), tuple(weights), cards[pick].id,
                        sp.by, sp.margin, draw, sp.seed or 0)
    new_lazy = _Lazy(lazy.cards, new_order, lazy.scores, lazy.static, lazy.cols, lazy.loud,
                     order=new_order)
    return attrs.evolve(decision, candidates=None, _lazy=new_lazy, spread=spread)


_SPREAD_CARDS = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from(["p", "q", "r", "s"]),
              st.sampled_from(["1", "1", "1", "2"]), st.sampled_from([50, 128_000, 128_000])),
    min_size=1, max_size=12, unique_by=lambda t: (t[0], t[1]))


@settings(max_examples=300, deadline=None)
@example(cards=[("a", "p", "1", 128_000), ("a", "q", "1", 128_000), ("b", "r", "1", 128_000)],
         margin=0.0, by="in_flight", seed=3, loads=[0] * 12, heads=[1.0] * 12, prompt=10,
         read_order_first=False)  # different models tie: the ranking's first model shares
@given(cards=_SPREAD_CARDS, margin=st.sampled_from([0.0, 0.0, 1e-3, 0.05, 0.5]),
       by=st.sampled_from(["in_flight", "headroom"]), seed=st.integers(0, 2**16),
       loads=st.lists(st.integers(0, 3), min_size=12, max_size=12),
       heads=st.lists(st.sampled_from([0.0, 0.2, 1.0]), min_size=12, max_size=12),
       prompt=st.sampled_from([10, 100, 3_000]), read_order_first=st.booleans())
def test_the_draw_is_the_reference_draw(cards, margin, by, seed, loads, heads, prompt,
                                        read_order_first) -> None:
    """Hypothesis: over drawn cards (one model behind several providers, different models at
    the same price, windows that exclude some), the spreader picks, records and orders
    exactly as the reference that sorted the whole ranking first."""
    from squirrel_models import ModelSelector, RequestShape
    from squirrel_models.scoring import BUILTIN_RULES
    from squirrel_models.selection import rules_from
    from squirrel_models.spread import Spreader

    made = [card(m, p, price=(pr, pr), context_window=w) for m, p, pr, w in cards]
    sel = ModelSelector(rules_from(BUILTIN_RULES, {}))
    sel.set_models(made)
    ids = sorted(c.id for c in made)

    def spreader() -> Spreader:
        return Spreader(margin, by, in_flight=lambda mid: loads[ids.index(mid)],
                        headroom=lambda c: heads[ids.index(c.id)], seed=seed)

    shape = RequestShape(prompt_tokens=prompt, max_output_tokens=10)
    got_d, want_d = sel.rank(None, shape), sel.rank(None, shape)
    if read_order_first:  # a ranking already sorted (explain() read it) draws the same
        got_d.candidates  # noqa: B018
    first, full = sel.rank(None, shape), sel.rank(None, shape)
    # The best model found without sorting is the sorted ranking's first.
    assert (first.chosen.card.id if first.chosen else None) == (
        full.candidates[0].card.id if full.candidates else None)
    got, want = spreader().apply(got_d), _reference_apply(spreader(), want_d)
    assert got.spread == want.spread
    assert [c.id for c in got.cards] == [c.id for c in want.cards]
    assert got.chosen == want.chosen
