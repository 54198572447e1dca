"""A new user's first mistakes in a configuration get a message that says what was meant:
an ``unknown key`` alone left them guessing at a misspelling, a key at the wrong level,
TOML's header trap, a plugin setting beside its ``options`` table, or an API key pasted in.
Each hint holds at every level and in every form (a mapping, a TOML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from squirrel_models import ConfigError, load_config, load_toml
from squirrel_models.config import structure_options

P: dict[str, Any] = {"name": "local", "type": "scripted", "options": {"models": ["a"]}}


@pytest.mark.parametrize(("data", "field", "hint"), [
    ({"timeuot": 5}, "timeuot", "did you mean timeout?"),
    ({"providers": [{**P, "modles": []}]}, "providers[0].modles", "did you mean models?"),
    ({"providers": [{**P, "models": [{"name": "m", "prcie": {}}]}]},
     "providers[0].models[0].prcie", "did you mean price?"),
    ({"providers": [{**P, "models": [{"name": "m", "price": {"input": 1, "output": 1, "cahced_input": 1}}]}]},
     "providers[0].models[0].price.cahced_input", "did you mean cached_input?"),
    ({"budget": {"limits": [{"scope": "global", "limit": 1, "per": "day"}]}},
     "budget.limits[0].per", "did you mean period?"),
    ({"requirements": {"max_cost": "0.1"}}, "requirements.max_cost", "did you mean max_request_cost?"),
    ({"max_attempts": 5}, "max_attempts", "max_attempts belongs in [fallback]"),
    ({"budget": {"period": "day"}}, "budget.period", "period belongs in [[budget.limits]]"),
    ({"providers": [{**P, "models": [{"name": "m", "input": 1}]}]},
     "providers[0].models[0].input", "input belongs in [providers.models.price]"),
    ({"budget": {"timeout": 5}}, "budget.timeout",
     "timeout is a top-level key: write it above the first [table] header"),
    ({"providers": [{**P, "base_url": "http://127.0.0.1:9/v1"}]}, "providers[0].base_url",
     "a provider type's own settings go in its options table (options.base_url = ...)"),
    ({"budget": {"path": "b.sqlite3"}}, "budget.path",
     "a budget backend's own settings go in its options table (options.path = ...)"),
    ({"circuit_breaker": {"xyzzy": 3}}, "circuit_breaker.xyzzy",
     "[circuit_breaker] takes: failure_threshold, base_cooldown"),
])
def test_an_unknown_key_says_what_was_probably_meant(data: dict[str, Any], field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: unknown key"), str(info.value)
    assert hint in str(info.value), str(info.value)


@attrs.frozen
class _HTTPOptions:  # the shape of an HTTP provider's options (the openai plugin's, say)
    base_url: str = "http://127.0.0.1:9/v1"
    api_key_env: str | None = None


@attrs.frozen
class _TokenOptions:  # Hugging Face's shape: the variable's option is token_env
    base_url: str = "http://127.0.0.1:9"
    token_env: str | None = None


def test_a_token_pasted_in_names_the_tables_own_variable_option() -> None:
    with pytest.raises(ConfigError) as info:
        structure_options({"token": "hf_abcdefghijklmnopqrstu"}, _TokenOptions, field="providers[0].options")
    assert "name that in token_env" in str(info.value) and "hf_abc" not in str(info.value)


@pytest.mark.parametrize("where", ["provider", "options", "top"])
def test_an_api_key_pasted_in_says_where_it_goes_and_is_not_shown(where: str) -> None:
    key = "sk-proj-Zq8xV3nT1mK5pL9wR2yB"
    with pytest.raises(ConfigError) as info:
        if where == "options":
            structure_options({"api_key": key}, _HTTPOptions, field="providers[0].options")
        else:
            load_config({"api_key": key} if where == "top" else {"providers": [{**P, "api_key": key}]})
    text = str(info.value)
    assert "a key never goes in the configuration" in text and "environment variable" in text, text
    assert key not in text and key[8:20] not in text
    if where != "top":
        assert "api_key_env" in text and info.value.field.endswith(".api_key"), text


def test_a_top_level_key_below_a_header_in_a_toml_file_names_the_trap(tmp_path: Path) -> None:
    path = tmp_path / "squirrel.toml"
    path.write_text('[budget]\nlimits = [{ scope = "global", limit = "1" }]\n\ntimeout = 30\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.field == "budget.timeout"
    assert "(in TOML a key below [budget] belongs to it)" in str(info.value)


def test_a_file_with_a_byte_order_mark_loads_as_without(tmp_path: Path) -> None:
    """Notepad and PowerShell write UTF-8 with a BOM; tomllib refused it as an "Invalid
    statement (at line 1, column 1)" the user could not see."""
    text = 'timeout = 30\n[budget]\nlimits = [{ scope = "global", limit = "1" }]\n'
    plain, bom = tmp_path / "plain.toml", tmp_path / "bom.toml"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_toml(bom) == load_toml(plain)
    assert load_toml(bom).timeout == 30


@pytest.mark.parametrize(("kw", "field", "says"), [
    ({"providers": ["local"], "exclude_providers": ["local"]}, "exclude_providers",
     "excludes every provider that providers allows (local)"),
    ({"providers": []}, "providers", "an empty list allows no provider at all"),
    ({"models": []}, "models", "an empty list allows no model at all"),
    ({"models": ["a/x"], "exclude_providers": ["a"]}, "models", "no model could be chosen"),
    ({"models": ["a/x", "b/y"], "providers": ["a"], "exclude_providers": ["a"]}, "exclude_providers",
     "no model could be chosen"),
    ({"models": ["a/x", "b/y"], "providers": ["c"]}, "models", "no model could be chosen"),
])
def test_requirements_that_leave_no_model_by_themselves_fail_naming_the_field(
        kw: dict[str, Any], field: str, says: str) -> None:
    """Each of these loaded, and every request then failed with "no model meets the
    requirements", naming no field of the configuration that caused it."""
    from squirrel_models import InvalidRequest, ModelRequirements

    with pytest.raises(InvalidRequest) as info:
        ModelRequirements(**kw)
    assert info.value.field == field and says in str(info.value), str(info.value)
    with pytest.raises(ConfigError) as cfg:
        load_config({"requirements": kw})
    assert cfg.value.field == f"requirements.{field}", str(cfg.value)


@pytest.mark.parametrize("kw", [
    {"models": ["a/x", "b/y"], "exclude_providers": ["a"]},
    {"models": ["x"], "exclude_providers": ["a"]},  # a bare name: its provider is not known here
    {"providers": ["a", "b"], "exclude_providers": ["a"]},
    {"models": ["a/x"], "allowed_models": ["b/y"]},  # a permission narrows a choice: the gateway's
])
def test_requirements_that_leave_a_model_still_load(kw: dict[str, Any]) -> None:
    from squirrel_models import ModelRequirements

    ModelRequirements(**kw)


@pytest.mark.parametrize(("field", "names", "says"), [
    ("capabilities", ["caht"], "capability 'caht' is no standard name; did you mean chat?"),
    ("features", ["+tool"], "feature '+tool' is no standard name; did you mean +tools?"),
    ("features", ["streming", "tools"], "feature 'streming' is no standard name; did you mean streaming?"),
])
def test_a_capability_or_feature_near_a_standard_name_is_warned_about(
        caplog: pytest.LogCaptureFixture, field: str, names: list[str], says: str) -> None:
    """``capabilities = ["caht"]`` loaded without a word and the model left every chat
    ranking; ``features = ["+tool"]`` gave it a feature nobody asks for."""
    cfg = load_config({"providers": [{**P, "models": [{"name": "m", field: names}]}]})
    assert getattr(cfg.providers[0].models[0], field) == frozenset(names)  # names are free: kept
    assert any(says in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), caplog.text


def test_standard_and_unrelated_names_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    load_config({"providers": [{**P, "models": [{"name": "m", "capabilities": ["chat", "vision"],
                                                  "features": ["+tools", "-streaming", "+my-house-feature"]}]}]})
    assert "no standard name" not in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize(("providers", "why"), [
    ([], "0 registered: the configuration has no [[providers]] entry"),
    ([{**P, "enabled": False}], "0 registered: every [[providers]] entry has enabled = false"),
    ([{**P, "options": {"models": []}}], "0 registered: the providers listed none"),
])
async def test_a_request_with_no_model_registered_says_why(providers: list[dict[str, Any]], why: str) -> None:
    """"no model meets the requirements (0 registered)" named nothing to fix."""
    from squirrel_models import AIRequest, CapabilityNotSupported, ModelManager
    from squirrel_models.plugins import PluginManager
    from squirrel_models.testing.provider import ScriptedPlugin

    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    async with ModelManager({"providers": providers}, plugins=pm) as mm:
        with pytest.raises(CapabilityNotSupported) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=4))
    assert why in str(info.value), str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [True, False, 10**20, 1e300])
async def test_a_call_timeout_that_is_a_bool_or_beyond_any_bound_is_refused(timeout: object) -> None:
    """``timeout=True`` ran as a 1 s deadline and 10**20 s was taken, where the configuration's
    ``timeout`` refuses both."""
    from squirrel_models import AIRequest, InvalidRequest, ModelManager
    from squirrel_models.plugins import PluginManager
    from squirrel_models.testing.provider import ScriptedPlugin

    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    priced = {**P, "models": [{"name": "a", "price": {"input": 0, "output": 0}}]}
    async with ModelManager({"providers": [priced]}, plugins=pm) as mm:
        with pytest.raises(InvalidRequest) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=4), timeout=timeout)  # type: ignore[arg-type]
        assert info.value.field == "timeout"
        assert (await mm.complete(AIRequest.from_prompt("hi", max_tokens=4), timeout=5)).text


def test_a_fallback_strategy_listed_twice_is_refused() -> None:
    """``strategies = ["retry", "graph", "retry"]`` loaded; the second ``retry`` was never
    asked (the first with a next step decides), so it did nothing the user could see."""
    with pytest.raises(ConfigError) as info:
        load_config({"fallback": {"strategies": ["retry", "graph", "retry"]}})
    assert info.value.field == "fallback.strategies[2]"
    assert "duplicate strategy 'retry'" in str(info.value)


@pytest.mark.parametrize(("data", "field", "says"), [
    ({"fallback": {"options": {"retry": {"base_delay": 100, "max_delay": 1}}}}, "fallback.options.retry",
     "base_delay must be at most max_delay (1 s, the backoff's cap), got 100"),
    ({"scoring": {"spread": False, "spread_margin": 0.5}}, "scoring.spread_margin",
     "has no effect unless spread = true"),
    ({"scoring": {"spread": False, "spread_by": "headroom"}}, "scoring.spread_by",
     "has no effect unless spread = true"),
    ({"telemetry": {"export_interval_s": 5}}, "telemetry.export_interval_s",
     "has no effect unless otlp_endpoint is set"),
    ({"telemetry": {"prometheus_host": "0.0.0.0"}}, "telemetry.prometheus_host",
     "has no effect unless prometheus_port is set"),
])
def test_a_setting_its_companion_makes_moot_is_refused(data: dict[str, Any], field: str, says: str) -> None:
    """Each loaded and did nothing: the backoff was capped below its base, spread = false
    ranks strictly whatever the margin, and an exporter's tuning without the exporter."""
    from squirrel_models import ModelManager

    with pytest.raises(ConfigError) as info:
        ModelManager(data)  # a strategy's options are read when the manager is built
    assert info.value.field == field and says in str(info.value), str(info.value)


@pytest.mark.parametrize("data", [
    {"fallback": {"options": {"retry": {"base_delay": 1, "max_delay": 1}}}},
    {"scoring": {"spread": False, "spread_seed": 3}},  # the seed also draws the backoff's jitter
    {"telemetry": {"otlp_endpoint": "http://127.0.0.1:4318/v1/metrics", "export_interval_s": 5}},
    {"telemetry": {"service_name": "mine"}},  # also the gateway's own /metrics
])
def test_settings_with_their_companion_load(data: dict[str, Any]) -> None:
    from squirrel_models import ModelManager

    ModelManager(data)


@pytest.mark.parametrize(("toml", "field", "says"), [
    ('[providers]\nname = "l"\ntype = "scripted"\n', "providers",
     "expected a list of tables, got dict {'name': 'l', 'type': 'scripted'}; in TOML a list of tables "
     "takes [[...]] headers (two pairs of brackets), [...] makes one table"),
    ('[[providers]]\nname = "l"\ntype = "scripted"\n[providers.models]\nname = "m"\n', "providers[0].models",
     "in TOML a list of tables takes [[...]] headers"),
    ('[budget.limits]\nscope = "global"\nlimit = "1"\n', "budget.limits", "in TOML a list of tables takes"),
    ('[[budget]]\nbackend = "memory"\n', "budget",
     "expected a table, got list [{'backend': 'memory'}]; in TOML a table takes a [...] header (one "
     "pair of brackets), [[...]] makes a list"),
    ('providers = "scripted"\n', "providers", "expected a list of tables, got str 'scripted'"),
])
def test_a_toml_header_with_the_wrong_brackets_says_so(tmp_path: Path, toml: str, field: str, says: str) -> None:
    """``[providers]`` for ``[[providers]]`` was "expected a list, got dict", which does not
    say that the brackets are the mistake; ``providers = "scripted"`` was told to write
    ``['scripted']``, a list of strings where tables belong."""
    path = tmp_path / "squirrel.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.field == field and says in str(info.value), str(info.value)
    assert "write ['scripted']" not in str(info.value)


def test_a_sub_table_above_its_list_entry_says_where_to_write_it(tmp_path: Path) -> None:
    """tomllib's "Cannot overwrite a value" pointed at the [[providers]] line, which is right."""
    path = tmp_path / "squirrel.toml"
    path.write_text('[[providers.models]]\nname = "m"\n\n[[providers]]\nname = "l"\ntype = "scripted"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert ("a [providers.…] table is written above the first [[providers]]: write each below the "
            "[[providers]] entry it belongs to") in str(info.value), str(info.value)
