"""A model switched off with ``enabled = false``, and ``ModelManager.reload()``: a changed
configuration applied without a restart, or refused whole with the field named."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    CapabilityNotSupported,
    ConfigError,
    ModelManager,
    ModelRequirements,
    load_config,
)

from .test_cli_command import SQUIRREL, Squirrel

pytestmark = pytest.mark.anyio

TOML = """
[[providers]]
name = "p"
type = "scripted"
options = {{ models = ["cheap", "dear"], reply = "nuts" }}
[[providers.models]]
name = "cheap"
price = {{ input = "{cheap}", output = "{cheap}" }}
enabled = {enabled}
[[providers.models]]
name = "dear"
price = {{ input = "30", output = "60" }}

[scoring]
policy = "{policy}"
"""


def toml(cheap: str = "0.1", enabled: str = "true", policy: str = "cheapest") -> str:
    return TOML.format(cheap=cheap, enabled=enabled, policy=policy)


def config(**kw: Any) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(toml(**kw))


async def test_a_disabled_model_is_listed_but_never_ranked(squirrel_plugins) -> None:
    async with ModelManager(config(enabled="false"), plugins=squirrel_plugins) as mm:
        assert set(mm.models) == {"p/cheap", "p/dear"}
        assert mm.disabled == {"p/cheap"}
        decision = mm.rank()
        assert [c.model_id for c in decision.candidates] == ["p/dear"]
        assert decision.excluded["p/cheap"] == "disabled in configuration"
        assert "p/cheap: disabled in configuration" in decision.explain()
        # a fallback edge or a pin does not bring it back
        with pytest.raises(CapabilityNotSupported, match=r"p/cheap is disabled in configuration"):
            await mm.complete(AIRequest.from_prompt("hi"), ModelRequirements(models={"p/cheap"}))
        response = await mm.complete(AIRequest.from_prompt("hi"))
        assert response.model == "p/dear"


def test_enabled_must_be_a_boolean() -> None:
    data = config()
    data["providers"][0]["models"][0]["enabled"] = "no"
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.field == "providers[0].models[0].enabled"


async def test_reload_applies_enabled_prices_and_policy_from_the_file(squirrel_plugins,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "squirrel.toml"
    path.write_text(toml())
    async with ModelManager.from_toml(path, plugins=squirrel_plugins) as mm:
        assert mm.get_model().id == "p/cheap"
        first = mm.rank()
        path.write_text(toml(enabled="false"))
        await mm.reload()
        assert mm.disabled == {"p/cheap"}
        assert mm.get_model().id == "p/dear"
        assert mm.rank().excluded["p/cheap"] == "disabled in configuration"
        assert first.chosen is not None and first.chosen.model_id == "p/cheap"  # kept its decision
        # back on, with a new price and another policy
        path.write_text(toml(cheap="90", policy="best"))
        await mm.reload()
        assert mm.disabled == frozenset()
        assert mm.models["p/cheap"].price is not None
        assert mm.models["p/cheap"].price.input == Decimal("90")
        assert mm.config.scoring.policy == "best"
        assert mm.get_model(ModelRequirements(max_cost_per_1k_tokens=Decimal("0.5"))) is not None
        response = await mm.complete(AIRequest.from_prompt("hi"), ModelRequirements(models={"p/cheap"}))
        assert response.model == "p/cheap"


async def test_a_bad_file_changes_nothing_and_names_the_field(squirrel_plugins, tmp_path: Path) -> None:
    path = tmp_path / "squirrel.toml"
    path.write_text(toml())
    async with ModelManager.from_toml(path, plugins=squirrel_plugins) as mm:
        before = (mm.config, dict(mm.models), mm.selector, mm.providers["p"])
        path.write_text(toml(enabled="false", policy="nope"))
        with pytest.raises(ConfigError) as info:
            await mm.reload()
        assert info.value.field == "scoring.policy"
        bad = config(enabled="false")
        bad["scoring"]["weights"] = {"no_such_rule": 1}
        with pytest.raises(ConfigError) as info:
            await mm.reload(bad)
        assert info.value.field == "scoring.weights"
        bad = config(enabled="false")
        bad["fallback"] = {"graph": {"p/cheap": ["p/nope"]}}
        with pytest.raises(ConfigError) as info:
            await mm.reload(bad)
        assert info.value.field == "fallback.graph.p/cheap"
        assert (mm.config, dict(mm.models), mm.selector, mm.providers["p"]) == before
        assert mm.disabled == frozenset()


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["providers"][0]["options"].update(reply="other"), "providers[0].options"),
    (lambda d: d["providers"].append({"name": "q", "type": "scripted"}), "providers"),
    (lambda d: d["providers"][0].update(enabled=False), "providers[0].enabled"),
    (lambda d: d.update(budget={"backend": "nope"}), "budget.backend"),
])
async def test_what_needs_a_restart_is_refused(squirrel_plugins, change: Any, field: str) -> None:
    async with ModelManager(config(), plugins=squirrel_plugins) as mm:
        new = config(enabled="false")
        change(new)
        with pytest.raises(ConfigError, match="restart") as info:
            await mm.reload(new)
        assert info.value.field == field
        assert mm.disabled == frozenset()


async def test_reload_budget_limits_apply_to_the_next_request(squirrel_plugins) -> None:
    async with ModelManager(config(), plugins=squirrel_plugins) as mm:
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=8))
        new = config()
        new["budget"] = {"limits": [{"scope": "global", "period": "day", "limit": "0.000000001"}]}
        await mm.reload(new)
        from squirrel_models import BudgetExceeded

        with pytest.raises(BudgetExceeded):
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=8))


async def test_a_request_in_flight_keeps_its_provider(squirrel_plugins) -> None:
    async with ModelManager(config(), plugins=squirrel_plugins) as mm:
        old = mm.providers["p"]
        new = config()
        new["providers"][0]["models"][1]["quality"] = 0.9  # p's overrides change: p is rebuilt
        await mm.reload(new)
        assert mm.providers["p"] is not old and not getattr(old, "closed", False)
        assert mm.models["p/dear"].quality == 0.9
        await mm.complete(AIRequest.from_prompt("hi"))
    assert getattr(old, "closed", False) and getattr(mm.providers["p"], "closed", False)


async def test_reload_without_a_file_says_what_to_pass(squirrel_plugins) -> None:
    async with ModelManager(config(), plugins=squirrel_plugins) as mm:
        with pytest.raises(ConfigError, match=r"pass the new configuration"):
            await mm.reload()


# --- the installed command ---------------------------------------------------------------


@pytest.mark.skipif(SQUIRREL is None, reason="the squirrel command is not installed")
def test_cli_shows_a_disabled_model(tmp_path: Path) -> None:
    sq = Squirrel(tmp_path)
    sq.config.write_text(toml(enabled="false"))
    r = sq("select", "--explain")
    assert r.returncode == 0, r.stderr
    assert "p/cheap: disabled in configuration" in r.stdout
    r = sq("select", "--json")
    assert json.loads(r.stdout)["excluded"]["p/cheap"] == "disabled in configuration"
    r = sq("models")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("p/cheap"))
    assert "DISABLED" in line
    assert "DISABLED" not in next(x for x in r.stdout.splitlines() if x.startswith("p/dear"))
    rows = {m["id"]: m for m in json.loads(sq("models", "--json").stdout)}
    assert rows["p/cheap"]["enabled"] is False and rows["p/dear"]["enabled"] is True
    r = sq("ask", "-m", "p/cheap", "hello")
    assert r.returncode != 0
    assert "p/cheap is disabled in configuration" in r.stderr + r.stdout
