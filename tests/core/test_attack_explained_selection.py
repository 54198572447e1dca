"""Selection nobody can explain, attacked: for random catalogues, requirements and weights
(configured as a user would), the decision must hold every candidate's per-rule scores and
every excluded model's reason with the figure that excluded it, reproduce its own totals and
order from those scores and the weights, be the same whatever order the models were declared
in, and call its first candidate first; when every model is excluded, the error lists why."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, CapabilityNotSupported, ConfigError, ModelManager, UnpricedModel
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import ScriptedPlugin

RULES = ("cost", "latency", "quality", "context", "reliability", "tags")
PRICES = [None, ("0", "0"), ("0.15", "0.6"), ("1", "2"), ("1", "2"), ("10", "30")]
WINDOWS = [2048, 4096, 8192, 128_000]
LATENCIES = [None, 100.0, 800.0, 2500.0]
QUALITIES = [None, 0.2, 0.5, 0.5, 0.9]
FEATURES = ["tools", "json_mode", "streaming"]
TAGS = ["fast", "local"]

MODEL = st.fixed_dictionaries({
    "price": st.sampled_from(PRICES), "context_window": st.sampled_from(WINDOWS),
    "latency_ms": st.sampled_from(LATENCIES), "quality": st.sampled_from(QUALITIES),
    "features": st.sets(st.sampled_from(FEATURES)), "tags": st.sets(st.sampled_from(TAGS))})
REQUIREMENTS = st.fixed_dictionaries({}, optional={
    "min_context_window": st.sampled_from([4096, 100_000]),
    "max_cost_per_1k_tokens": st.sampled_from(["0.001", "0.05"]),
    "max_latency_ms": st.sampled_from([500.0, 1000.0]),
    "required_features": st.sets(st.sampled_from(FEATURES), min_size=1, max_size=2).map(sorted),
    "tags": st.sets(st.sampled_from(TAGS), min_size=1, max_size=1).map(sorted),
    "prefer_tags": st.sets(st.sampled_from(TAGS), min_size=1).map(sorted)})
#: Some rules weighted (0 switches one off), the rest at their defaults; every weight 0 is the
#: ConfigError of test_every_weight_zero_is_refused_naming_the_field.
WEIGHTS = st.dictionaries(st.sampled_from(RULES), st.sampled_from([0.0, 0.5, 1.0, 3.0])).filter(
    lambda w: any(v > 0 for v in w.values()) or len(w) < len(RULES))


def _entry(name: str, m: dict[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {"name": name, "context_window": m["context_window"],
                         "features": sorted(m["features"]), "tags": sorted(m["tags"])}
    if m["price"] is not None:
        e["price"] = {"input": m["price"][0], "output": m["price"][1]}
    for key in ("latency_ms", "quality"):
        if m[key] is not None:
            e[key] = m[key]
    return e


def _config(models: list[dict[str, Any]], order: list[int], req: dict[str, Any], weights: dict[str, float],
            allow_unpriced: bool) -> dict[str, Any]:
    names = [f"m{i:04d}" for i in range(len(models))]
    return {"providers": [{"name": "p", "type": "scripted", "options": {"models": [names[i] for i in order]},
                           "models": [_entry(names[i], models[i]) for i in order]}],
            "requirements": req, "scoring": {"weights": weights},
            "budget": {"allow_unpriced": allow_unpriced}}


def _manager(cfg: dict[str, Any]) -> ModelManager:
    plugins = PluginManager()
    plugins.register(ScriptedPlugin(), "scripted")
    return ModelManager(cfg, plugins=plugins)


def _check_decision(decision: Any, models: list[dict[str, Any]], req: dict[str, Any]) -> None:
    ids = {f"p/m{i:04d}": m for i, m in enumerate(models)}
    ranked = [c.model_id for c in decision.candidates]
    # Every model is ranked or excluded, never both, never neither.
    assert set(ranked) | set(decision.excluded) == set(ids)
    assert not set(ranked) & set(decision.excluded)
    weights = dict(decision.weights)
    assert weights and all(w > 0 for w in weights.values())
    for model_id, reason in decision.excluded.items():
        m = ids[model_id]
        assert reason, model_id
        # A model excluded by a figure names the figure and the limit it failed.
        if reason.startswith("context window"):
            assert f"{m['context_window']} < {req['min_context_window']}" in reason, reason
        if reason.startswith("costs $"):
            assert re.search(r"\$[0-9.]+/1k tokens > \$" + re.escape(req["max_cost_per_1k_tokens"]), reason), reason
        if reason.startswith("latency"):
            assert f"{m['latency_ms']:.0f} ms > {req['max_latency_ms']:g} ms" in reason, reason
    totals = []
    for c in decision.candidates:
        assert set(weights) <= set(c.scores), (c.model_id, c.scores)
        assert all(0.0 <= s <= 1.0 for s in c.scores.values()), c.scores
        total = sum(weights[r] * c.scores[r] for r in weights) / sum(weights.values())
        assert c.score == pytest.approx(total, rel=1e-9, abs=1e-12), (c.model_id, c.score, total)
        totals.append(total)
    # The recorded scores reproduce the order: best first, equal totals in model id order.
    for (a, ta), (b, tb) in zip(zip(ranked, totals, strict=True), zip(ranked[1:], totals[1:], strict=True),
                                strict=False):
        assert ta >= tb - 1e-9, (a, ta, b, tb)
        if ta == tb:
            assert a < b, (a, b)
    text = decision.explain(limit=len(ids) + 1)
    for model_id in [*ranked, *decision.excluded]:
        assert model_id in text


async def _decide_and_call(cfg: dict[str, Any], models: list[dict[str, Any]], req: dict[str, Any]) -> Any:
    async with _manager(cfg) as manager:
        request = AIRequest.from_prompt("hi", max_tokens=4)
        # The ranking for this request (its size moves the context rule's scores).
        decision = manager.rank(None, request)
        _check_decision(decision, models, req)
        if not decision.candidates:
            with pytest.raises((CapabilityNotSupported, UnpricedModel)) as info:
                await manager.complete(request)
            # The error lists why each model was left out, also when a price was missing.
            error = info.value
            assert error.excluded == dict(decision.excluded)
            for model_id, reason in list(decision.excluded.items())[:4]:
                assert f"{model_id}: {reason}" in str(error) or (
                    isinstance(error, UnpricedModel) and error.model_id == model_id), (model_id, str(error))
            return decision.to_dict()
        response = await manager.complete(request)
        called = [a.model_id for a in response.attempts if a.outcome != "skipped"]
        assert called[0] == decision.candidates[0].model_id
        assert response.decision.to_dict()["candidates"] == decision.to_dict()["candidates"]
        return decision.to_dict()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(models=st.lists(MODEL, min_size=1, max_size=10), req=REQUIREMENTS, weights=WEIGHTS,
       allow_unpriced=st.booleans(), data=st.data())
def test_every_decision_explains_itself(backend: str, models: list[dict[str, Any]], req: dict[str, Any],
                                        weights: dict[str, float], allow_unpriced: bool, data: st.DataObject) -> None:
    order = list(range(len(models)))
    shuffled = data.draw(st.permutations(order))
    cfg = _config(models, order, req, weights, allow_unpriced)
    first = anyio.run(_decide_and_call, cfg, models, req, backend=backend)
    # The same inputs, declared in another order: the same decision.
    again = anyio.run(_decide_and_call, _config(models, shuffled, req, weights, allow_unpriced), models, req,
                      backend=backend)
    assert again == first


def test_every_weight_zero_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        _manager(_config([{"price": ("1", "1"), "context_window": 4096, "latency_ms": None, "quality": None,
                           "features": set(), "tags": set()}], [0], {}, dict.fromkeys(RULES, 0.0), False))
    assert info.value.field == "scoring.weights"


@pytest.mark.anyio
async def test_a_thousand_models_of_three_kinds_tie_in_id_order() -> None:
    """1,000 models in three groups of identical cards, declared in reverse: every group ties,
    and a tie is ranked by model id, whatever the declaration order."""
    kinds = [{"price": ("1", "2"), "context_window": 8192, "latency_ms": None, "quality": 0.5,
              "features": set(), "tags": set()},
             {"price": ("0.15", "0.6"), "context_window": 8192, "latency_ms": None, "quality": 0.5,
              "features": set(), "tags": set()},
             {"price": None, "context_window": 8192, "latency_ms": None, "quality": 0.9,
              "features": set(), "tags": set()}]
    models = [kinds[i % 3] for i in range(1000)]
    cfg = _config(models, list(range(999, -1, -1)), {}, {}, False)
    async with _manager(cfg) as manager:
        decision = manager.rank()
        _check_decision(decision, models, {})
    ranked = [c.model_id for c in decision.candidates]
    cheap = [f"p/m{i:04d}" for i in range(1, 1000, 3)]
    dear = [f"p/m{i:04d}" for i in range(0, 1000, 3)]
    assert ranked == cheap + dear
    assert set(decision.excluded) == {f"p/m{i:04d}" for i in range(2, 1000, 3)}
    assert all(Decimal("0") <= Decimal(str(c.score)) <= 1 for c in decision.candidates)


@pytest.mark.anyio
async def test_an_unpriced_refusal_names_every_other_models_reason() -> None:
    """Before: ``UnpricedModel`` named the unpriced model alone; why the others were left out
    (here a missing feature) was in no error."""
    plain = {"context_window": 8192, "latency_ms": None, "quality": None, "tags": set()}
    models = [{**plain, "price": None, "features": {"tools"}}, {**plain, "price": ("1", "2"), "features": set()}]
    async with _manager(_config(models, [0, 1], {"required_features": ["tools"]}, {}, False)) as manager:
        with pytest.raises(UnpricedModel) as info:
            await manager.complete(AIRequest.from_prompt("hi"))
    assert info.value.model_id == "p/m0000"
    assert info.value.excluded["p/m0001"] == "lacks feature tools"
    assert "p/m0001: lacks feature tools" in str(info.value)


@pytest.mark.anyio
async def test_a_rate_limit_refusal_names_every_other_models_reason() -> None:
    """Before: with one model left out by its window, one by the price ceiling and one by a tpm
    limit no wait can make room in, ``RateLimitTooSmall`` named the rate-limited model alone;
    the other two reasons were in no error. Every error raised when no model is left carries
    ``excluded`` (one shared mechanism, :class:`squirrel_models.errors.NoModelLeft`)."""
    from squirrel_models import RateLimitTooSmall
    from squirrel_models.errors import NoModelLeft

    plain = {"latency_ms": None, "quality": None, "features": set(), "tags": set()}
    models = [{**plain, "price": ("0", "0"), "context_window": 2048},
              {**plain, "price": ("10", "30"), "context_window": 8192},
              {**plain, "price": ("0", "0"), "context_window": 8192}]
    cfg = _config(models, [0, 1, 2], {"min_context_window": 4096, "max_cost_per_1k_tokens": "0.001"}, {},
                  False)
    cfg["rate_limits"] = {"limits": [{"scope": "model:p/m0002", "tpm": 3}]}
    async with _manager(cfg) as manager:
        with pytest.raises(RateLimitTooSmall) as info:
            await manager.complete(AIRequest.from_prompt("hi", max_tokens=4))
        decision = manager.rank(request=AIRequest.from_prompt("hi", max_tokens=4))
    error = info.value
    assert isinstance(error, NoModelLeft)
    assert error.model_id == "p/m0002"
    assert error.excluded == dict(decision.excluded)
    assert set(error.excluded) == {"p/m0000", "p/m0001", "p/m0002"}
    assert error.excluded["p/m0000"].startswith("context window 2048 < 4096")
    assert error.excluded["p/m0001"].startswith("costs $")
    assert error.excluded["p/m0002"].startswith("tpm limit 3 on model:p/m0002")
    for model_id in ("p/m0000", "p/m0001"):
        assert f"{model_id}: {error.excluded[model_id]}" in str(error), str(error)
    assert "no other model meets the requirements" in str(error)


def test_every_no_model_left_error_shares_the_mechanism() -> None:
    from squirrel_models import RateLimitTooSmall
    from squirrel_models.errors import NoModelLeft

    why = {"p/a": "lacks feature tools", "p/b": "price unknown"}
    for error in (CapabilityNotSupported("no model", excluded=why), UnpricedModel("p/b", excluded=why),
                  RateLimitTooSmall(scope="model:p/b", kind="tpm", limit=3, requested=8, model_id="p/b",
                                    excluded=why)):
        assert isinstance(error, NoModelLeft) and error.excluded == why
        assert "p/a: lacks feature tools" in str(error)
    # an attempt's refusal (no selection behind it) names nothing else, and keeps it when renamed
    alone = RateLimitTooSmall(scope="global", kind="tpm", limit=3, requested=8)
    assert alone.excluded == {} and "no other model" not in str(alone)
    assert RateLimitTooSmall(scope="global", kind="tpm", limit=3, requested=8,
                             excluded=why).with_model("p/b").excluded == why
