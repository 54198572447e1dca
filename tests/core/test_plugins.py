"""Plugin loading: order, environment controls, isolation of broken plugins, strict mode."""

from __future__ import annotations

import logging

import pytest
from squirrel_models import ConfigError, ModelManager, PluginError
from squirrel_models.plugins import PluginManager

from .dists import install, make_dist

GOOD = """
from squirrel_models import hookimpl, ProviderType
from squirrel_models.testing.provider import _factory

@hookimpl
def register_providers():
    return [ProviderType("good", _factory)]
"""

RAISES_ON_IMPORT = "raise RuntimeError('this plugin is broken')\n"
EXITS_ON_IMPORT = "import sys\nsys.exit(3)\n"

HOOK_EXITS = """
import sys
from squirrel_models import hookimpl

@hookimpl
def register_providers():
    sys.exit('bye')
"""

HOOK_RAISES = """
from squirrel_models import hookimpl

@hookimpl
def register_providers():
    raise ValueError('exploded inside the hook')
"""

WRONG_SIGNATURE = """
from squirrel_models import hookimpl

@hookimpl
def register_providers(no_such_argument):
    return []
"""

DUPLICATE = """
from squirrel_models import hookimpl, ProviderType
from squirrel_models.testing.provider import _factory

@hookimpl
def register_providers():
    return [ProviderType("good", _factory, description="the second one")]
"""

WRONG_RETURN = """
from squirrel_models import hookimpl

@hookimpl
def register_providers():
    return "not a list"
"""


@pytest.fixture
def dists(tmp_path, monkeypatch):
    def add(name: str, source: str) -> None:
        mod = f"sq_{name.replace('-', '_')}"
        root = make_dist(tmp_path / name, f"sq-{name}", entry_points={name: mod},
                         modules={mod: source})
        install(monkeypatch, root)
    monkeypatch.delenv("SQUIRREL_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("SQUIRREL_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("SQUIRREL_STRICT_PLUGINS", raising=False)
    return add


def test_entry_point_plugin_is_discovered(dists) -> None:
    dists("good", GOOD)
    pm = PluginManager()
    assert "good" in pm.provider_types()
    info = {i.name: i for i in pm.plugins()}["good"]
    assert (info.source, info.dist, info.version) == ("entrypoint", "sq-good", "0.1")
    assert info.hooks == ("register_providers",)


def test_builtins_register_like_plugins() -> None:
    pm = PluginManager(load_entry_points=False)
    names = [i.name for i in pm.plugins()]
    assert names == ["builtin.scoring", "builtin.fallback", "builtin.memory_budget",
                     "builtin.memory_ratelimit", "builtin.simple"]
    assert "memory" in pm.budget_backends()
    assert "memory" in pm.ratelimit_stores()


def test_a_description_is_the_docstrings_whole_first_paragraph() -> None:
    """``squirrel plugins`` showed the first line only: "exact, thread-safe," cut there."""
    descriptions = {i.name: i.description for i in PluginManager(load_entry_points=False).plugins()}
    assert descriptions["builtin.memory_ratelimit"].endswith("exact, thread-safe, one process.")
    assert descriptions["builtin.simple"].endswith("so budgets reserve by the model's own count.")
    assert all("\n" not in d for d in descriptions.values())


@pytest.mark.parametrize(("name", "source", "reason"), [
    ("broken", RAISES_ON_IMPORT, "failed to import sq_broken: RuntimeError: this plugin is broken"),
    ("raiser", HOOK_RAISES, "hook register_providers raised ValueError: exploded inside the hook"),
    ("wrongsig", WRONG_SIGNATURE, "violates the hook specs"),
    ("wrongret", WRONG_RETURN, "must return a list of ProviderType"),
    ("exits", EXITS_ON_IMPORT, "failed to import sq_exits: SystemExit: 3"),
    ("hookexits", HOOK_EXITS, "hook register_providers raised SystemExit: bye"),
])
def test_broken_plugin_is_skipped_and_logged(dists, caplog, name, source, reason) -> None:
    dists("good", GOOD)
    dists(name, source)
    with caplog.at_level(logging.ERROR, "squirrel_models.plugins"):
        pm = PluginManager()
        types = pm.provider_types()
    assert "good" in types  # the rest keep working
    assert any(n == name and reason in r for n, r in pm.failures), pm.failures
    assert any(name in rec.getMessage() and "skipped" in rec.getMessage()
               for rec in caplog.records)


UNKNOWN_HOOK = """
from squirrel_models import hookimpl

@hookimpl
def register_provider():   # the hook is register_providers
    return []
"""

UNKNOWN_HOOK_TOO = """
from squirrel_models import hookimpl

@hookimpl
def frobnicate(event):   # no such hook, nothing close to it either
    pass
"""


UNMARKED = """
from squirrel_models import ProviderType

def register_providers():   # @hookimpl forgotten: pluggy ignores it
    return [ProviderType("unmarked", lambda spec: None)]
"""


def test_a_hook_without_hookimpl_is_warned(dists, caplog) -> None:
    """A hook function without @hookimpl is silently not a hook: the plugin loaded, offered
    nothing, and the configuration's 'unknown provider type' did not say why."""
    dists("unmarked", UNMARKED)
    with caplog.at_level(logging.WARNING, "squirrel_models.plugins"):
        pm = PluginManager()
        assert "unmarked" not in pm.provider_types()
    (warned,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ("plugin 'unmarked' defines register_providers without @hookimpl, so it is never called: "
                      "mark it with `from squirrel_models import hookimpl`")


def test_failures_read_first_load_the_plugins(dists) -> None:
    """``PluginManager().failures``, read before anything else, was [] though a plugin failed."""
    dists("broken", RAISES_ON_IMPORT)
    pm = PluginManager()
    assert [n for n, _ in pm.failures] == ["broken"]
    assert PluginManager().disabled == []


def test_a_failed_import_names_the_entry_point_and_its_distribution(dists) -> None:
    """An entry point naming a module that does not exist (a typo) said only 'No module named
    ...': now it says which distribution declares it, where the typo is to be fixed."""
    dists("broken", RAISES_ON_IMPORT)
    ((name, why),) = PluginManager().failures
    assert name == "broken"
    assert why.endswith("(entry point broken = 'sq_broken' of sq-broken 0.1)"), why


def test_every_plugin_with_an_unknown_hook_is_reported_with_the_hook_meant(dists, caplog) -> None:
    """pluggy's check_pending() names one violation at a time: the second plugin stayed
    registered, unreported; and 'unknown hook' did not say which hook was meant."""
    dists("good", GOOD)
    dists("typo", UNKNOWN_HOOK)
    dists("typo2", UNKNOWN_HOOK_TOO)
    pm = PluginManager()
    failed = dict(pm.failures)
    assert set(failed) == {"typo", "typo2"}, pm.failures
    assert "unknown hook 'register_provider'" in failed["typo"]
    assert "did you mean 'register_providers'? the hooks are listed in docs/hooks.md" in failed["typo"]
    assert "no such hook: the hooks are listed in docs/hooks.md" in failed["typo2"]
    assert {i.name for i in pm.plugins()} & {"typo", "typo2"} == set()
    assert "good" in pm.provider_types()


@pytest.mark.parametrize("env", ["SQUIRREL_LOAD_PLUGINS", "SQUIRREL_DISABLE_PLUGINS"])
def test_a_name_no_plugin_has_in_the_environment_is_warned(dists, monkeypatch, caplog, env) -> None:
    """A typo in SQUIRREL_LOAD_PLUGINS loaded nothing, in SQUIRREL_DISABLE_PLUGINS blocked
    nothing, without a word."""
    dists("good", GOOD)
    monkeypatch.setenv(env, "god,builtin.scoring")
    with caplog.at_level(logging.WARNING, "squirrel_models.plugins"):
        PluginManager().plugins()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"{env} names 'god', which no installed plugin has (installed: ")


def test_a_huge_name_in_the_environment_is_warned_about_briefly(dists, monkeypatch, caplog) -> None:
    """The warning quoted a name as it was: a variable of a megabyte made a line of a
    megabyte (found by the attack pass)."""
    dists("good", GOOD)
    monkeypatch.setenv("SQUIRREL_LOAD_PLUGINS", "good," + "x" * 1_000_000)
    with caplog.at_level(logging.WARNING, "squirrel_models.plugins"):
        PluginManager().plugins()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and len(warned[0]) < 2_000, [w[:100] for w in warned]
    assert "good" in warned[0] and "builtin.scoring" in warned[0]


@pytest.mark.parametrize(("name", "source"), [
    ("broken", RAISES_ON_IMPORT), ("raiser", HOOK_RAISES), ("wrongsig", WRONG_SIGNATURE),
    ("wrongret", WRONG_RETURN), ("exits", EXITS_ON_IMPORT), ("hookexits", HOOK_EXITS),
])
def test_strict_mode_turns_each_into_an_error(dists, monkeypatch, name, source) -> None:
    dists(name, source)
    monkeypatch.setenv("SQUIRREL_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=name):
        PluginManager().provider_types()


def test_plugin_exiting_at_import_does_not_end_the_cli(dists) -> None:
    from click.testing import CliRunner
    from squirrel_models.cli import cli

    dists("exits", EXITS_ON_IMPORT)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "builtin.memory_budget" in result.output


def test_strict_config_turns_broken_plugin_into_error(dists) -> None:
    dists("broken", RAISES_ON_IMPORT)
    with pytest.raises(PluginError, match="broken"):
        ModelManager({"strict_plugins": True})


def test_duplicate_provider_type_first_wins(dists, caplog) -> None:
    dists("a-first", GOOD)
    dists("b-second", DUPLICATE)
    pm = PluginManager()
    types = pm.provider_types()
    assert types["good"].description == ""
    assert any(n == "b-second" and "already provided" in r for n, r in pm.failures)


def test_allow_list_and_block_list(dists, monkeypatch) -> None:
    dists("good", GOOD)
    dists("broken", RAISES_ON_IMPORT)
    monkeypatch.setenv("SQUIRREL_LOAD_PLUGINS", "good")
    pm = PluginManager()
    assert "good" in pm.provider_types()
    assert pm.failures == []  # the broken one was never imported
    monkeypatch.setenv("SQUIRREL_LOAD_PLUGINS", "")
    assert "good" not in PluginManager().provider_types()
    monkeypatch.delenv("SQUIRREL_LOAD_PLUGINS")
    monkeypatch.setenv("SQUIRREL_DISABLE_PLUGINS", "broken,builtin.memory_budget")
    pm = PluginManager()
    assert pm.failures == []
    assert "memory" not in pm.budget_backends()


@pytest.mark.parametrize(("env", "value", "why"), [
    ("SQUIRREL_DISABLE_PLUGINS", "good", "blocked by SQUIRREL_DISABLE_PLUGINS"),
    ("SQUIRREL_LOAD_PLUGINS", "", "not in SQUIRREL_LOAD_PLUGINS"),
])
def test_a_type_from_a_plugin_not_loaded_says_why(dists, monkeypatch, env, value, why) -> None:
    """It said "unknown provider type 'good'; installed: ..." of an installed plugin that the
    environment had turned off."""
    dists("good", GOOD)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        ModelManager({"providers": [{"name": "p", "type": "good"}]})
    assert info.value.field == "providers[0].type"
    assert str(info.value).startswith("providers[0].type: unknown provider type 'good'; installed: ")
    assert str(info.value).endswith(f"; not loaded: good ({why})")
    with pytest.raises(ConfigError, match=rf"not loaded: good \({why}\)"):
        ModelManager({"budget": {"backend": "nosuch"}})


@pytest.mark.parametrize(("value", "on"), [("", False), ("0", False), ("false", False),
                                           ("No", False), ("off", False), ("1", True),
                                           ("true", True), ("yes", True)])
def test_yes_and_no_environment_variables(monkeypatch, value, on) -> None:
    """``SQUIRREL_STRICT_PLUGINS=false`` turned strict mode on: only "" and "0" meant no."""
    monkeypatch.setenv("SQUIRREL_STRICT_PLUGINS", value)
    monkeypatch.setenv("SQUIRREL_TRACE_PLUGINS", value)
    pm = PluginManager(load_entry_points=False)
    pm.load()
    assert (pm.strict, pm._trace) == (on, on)


def test_trace_logs_hook_calls(dists, monkeypatch, caplog) -> None:
    dists("good", GOOD)
    monkeypatch.setenv("SQUIRREL_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.DEBUG, "squirrel_models.plugins"):
        PluginManager().provider_types()
    assert any("register_providers" in r.getMessage() for r in caplog.records)


def test_loading_is_lazy_and_idempotent(dists) -> None:
    dists("good", GOOD)
    pm = PluginManager()
    assert pm._loaded is False
    pm.load()
    pm.load()
    assert [i.name for i in pm.plugins()].count("good") == 1


def test_manual_registration_validates(squirrel_plugins) -> None:
    class Bad:
        from squirrel_models import hookimpl

        @hookimpl
        def register_providers(self, nonsense):  # not in the spec
            return []

    with pytest.raises(PluginError):
        squirrel_plugins.register(Bad(), "bad")


def test_observer_exceptions_do_not_break_requests(squirrel_plugins, squirrel_manager) -> None:
    import anyio
    from squirrel_models import AIRequest, hookimpl
    from squirrel_models.testing import ScriptedProvider

    seen: list[str] = []

    class Observer:
        @hookimpl
        def on_attempt_finished(self, event):
            seen.append(event.record.outcome)
            raise RuntimeError("observer bug")

        @hookimpl
        def on_request_finished(self, event):
            seen.append("request")

    squirrel_plugins.register(Observer(), "observer")
    p = ScriptedProvider.with_models("p", "m", price=None)

    async def go() -> None:
        async with squirrel_manager({"budget": {"allow_unpriced": True}}) as mm:
            mm.register_model(p.models[0], p)
            r = await mm.complete(AIRequest.from_prompt("hi"))
            assert r.text

    anyio.run(go)
    assert seen == ["ok", "request"]


def test_two_providers_claiming_one_model_id(squirrel_manager, caplog) -> None:
    """A provider listing a model id that is not its own (or twice) is refused, logged, and
    the first registration kept; strict mode makes it an error."""
    import anyio
    from squirrel_models import AIRequest, ModelCard
    from squirrel_models.testing import ScriptedProvider

    a = ScriptedProvider.with_models("a", "m")
    b = ScriptedProvider("b", [ModelCard.for_provider("a", "m", provider_type="scripted"), *a.models])
    a.script("m", *[__import__("squirrel_models.testing", fromlist=["Reply"]).Reply("from a")] * 2)

    async def go(strict: bool) -> str:
        mm = squirrel_manager({"strict_plugins": strict, "budget": {"allow_unpriced": True}})
        mm._providers.update({"a": a, "b": b})
        async with mm:
            return (await mm.complete(AIRequest.from_prompt("hi"))).text

    with caplog.at_level(logging.ERROR, "squirrel_models"):
        assert anyio.run(go, False) == "from a"
    assert "provider 'b' lists a/m, which belongs to provider 'a'" in caplog.text
    with pytest.raises(PluginError, match="a/m"):
        anyio.run(go, True)
