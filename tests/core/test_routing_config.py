"""Configuration and routing traps of a user's first hour (issue 13), through the installed
``squirrel`` command where a user meets them and through the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from squirrel_models import ConfigError, ModelManager, SquirrelError

from .dists import SCRIPTED_DIST, make_dist

SQUIRREL = Path(sys.executable).with_name("squirrel")

PROVIDERS = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["cheap", "dear"], reply = "squirrels hide nuts" }
[[providers.models]]
name = "cheap"
price = { input = "0.1", output = "0.2" }
[[providers.models]]
name = "dear"
price = { input = "30", output = "60" }
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def squirrel(tmp_path: Path) -> Run:
    """Run the installed ``squirrel`` command in a subprocess, with the scripted provider
    installed as a real entry point; ``config`` is written to ``tmp_path/squirrel.toml``."""
    dist = make_dist(tmp_path / "dist", "sq-scripted", entry_points=SCRIPTED_DIST)
    env = {k: v for k, v in os.environ.items() if k != "SQUIRREL_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(dist), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["SQUIRREL_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str, config: str | None = None, cwd: Path = tmp_path
            ) -> subprocess.CompletedProcess[str]:
        extra: list[str] = []
        if config is not None:
            path = tmp_path / "squirrel.toml"
            path.write_text(config)
            extra = ["--config", str(path)]
        return subprocess.run([str(SQUIRREL), *args, *extra], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=120)

    return run


def manager(config: str, tmp_path: Path, squirrel_plugins: object) -> ModelManager:
    path = tmp_path / "api.toml"
    path.write_text(config)
    return ModelManager.from_toml(path, plugins=squirrel_plugins)


# --- names that match nothing are refused at start-up ---------------------------------------

@pytest.mark.parametrize(("scope", "hint"), [
    ("model:local/cheap-tok23", "did you mean local/cheap"),
    ("model:cheap", "<provider>/<model>"),
    ("provider:faek", "no provider named 'faek'"),
])
def test_a_budget_scope_naming_nothing_is_refused(squirrel: Run, scope: str, hint: str) -> None:
    cfg = PROVIDERS + f'[[budget.limits]]\nscope = "global"\nlimit = "5"\n' \
                      f'[[budget.limits]]\nscope = "{scope}"\nlimit = "1"\n'
    r = squirrel("ask", "hello", "--no-stream", config=cfg)
    assert r.returncode != 0
    assert "ConfigError: budget.limits[1].scope: " in r.stderr
    assert hint in r.stderr and "Traceback" not in r.stderr


def test_scopes_that_name_something_are_accepted(squirrel: Run) -> None:
    cfg = PROVIDERS + """
[[providers]]
name = "spare"
type = "scripted"
enabled = false
[budget]
limits = [{ scope = "model:local/cheap", limit = "1" }, { scope = "provider:local", limit = "1" },
          { scope = "provider:spare", limit = "1" }, { scope = "model:spare/x", limit = "1" },
          { scope = "key:nobody-yet", limit = "1" }, { scope = "key:*", limit = "1" }]
"""
    r = squirrel("ask", "hello", "--no-stream", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "local/cheap"


@pytest.mark.parametrize(("extra", "field", "hint"), [
    ('[fallback.graph]\n"local/cheap" = ["local/dera"]\n', "fallback.graph.local/cheap",
     "did you mean local/dear"),
    ('[fallback.graph]\n"local/chaep" = ["local/dear"]\n', "fallback.graph.local/chaep",
     "no model named 'local/chaep'"),
    ('[requirements]\nmodels = ["local/cheep"]\n', "requirements.models", "local/cheap"),
    ('[requirements]\nallowed_models = ["local/cheep"]\n', "requirements.allowed_models",
     "local/cheap"),
    ('[requirements]\nproviders = ["lcoal"]\n', "requirements.providers", "local"),
    ('[requirements]\nexclude_providers = ["lcoal"]\n', "requirements.exclude_providers", "local"),
])
def test_unknown_models_in_graph_and_requirements_fail_at_start_up(
        squirrel: Run, extra: str, field: str, hint: str) -> None:
    r = squirrel("select", config=PROVIDERS + extra)
    assert r.returncode != 0
    assert f"ConfigError: {field}: no " in r.stderr and hint in r.stderr


@pytest.mark.anyio
async def test_start_refuses_unknown_names_and_closes_providers(tmp_path: Path,
                                                                squirrel_plugins: object) -> None:
    cfg = PROVIDERS + '[budget]\nlimits = [{ scope = "provider:faek", limit = "1" }]\n'
    mm = manager(cfg, tmp_path, squirrel_plugins)
    with pytest.raises(ConfigError) as info:
        async with mm:
            raise AssertionError("started")
    assert info.value.field == "budget.limits[0].scope"
    assert mm.providers["local"].closed  # type: ignore[attr-defined]


# --- rank() before start() ------------------------------------------------------------------

@pytest.mark.anyio
async def test_rank_before_start_says_to_start(tmp_path: Path, squirrel_plugins: object) -> None:
    mm = manager(PROVIDERS, tmp_path, squirrel_plugins)
    with pytest.raises(SquirrelError, match=r"rank\(\) before start\(\).*async with"):
        mm.rank()
    with pytest.raises(SquirrelError, match=r"get_model\(\) before start\(\)"):
        mm.get_model()
    async with mm:
        assert mm.get_model().id == "local/cheap"
        assert [c.card.id for c in mm.rank().candidates] == ["local/cheap", "local/dear"]


# --- relative paths in options are relative to the configuration file -----------------------

def test_relative_option_paths_follow_the_config_file(tmp_path: Path) -> None:
    import attrs
    from squirrel_models.config import load_config, load_toml, path_option, structure_options

    @attrs.frozen
    class Opts:
        path: str = path_option()
        files: tuple[str, ...] = path_option(default=())
        name: str = "data.db"  # not a path option: left alone

    (tmp_path / "conf").mkdir()
    cfg_file = tmp_path / "conf" / "squirrel.toml"
    cfg_file.write_text('[budget]\noptions = { path = "b.sqlite3" }\n')
    cfg = load_toml(cfg_file)
    assert cfg.base_dir == str((tmp_path / "conf").resolve())
    opts = structure_options({"path": "state/b.db", "files": ["a.gguf", "/abs/b.gguf", "~/c"],
                              "name": "x.db"}, Opts, field="o", base_dir=cfg.base_dir)
    assert isinstance(opts, Opts)
    assert opts.path == str(tmp_path.resolve() / "conf" / "state" / "b.db")
    assert opts.files == (str(tmp_path.resolve() / "conf" / "a.gguf"), "/abs/b.gguf", "~/c")
    assert opts.name == "x.db"
    # a mapping without base_dir: the current directory, as before
    assert load_config({}).base_dir is None
    assert structure_options({"path": "b.db"}, Opts, field="o", base_dir=None).path == "b.db"
    cfg_file.write_text('base_dir = "../shared"\n')
    assert load_toml(cfg_file).base_dir == str(tmp_path.resolve() / "conf" / "../shared")


# --- key:vip replaces key:* ------------------------------------------------------------------

def test_a_vip_key_may_get_more_than_the_default(squirrel: Run) -> None:
    cfg = PROVIDERS + """
[budget]
limits = [{ scope = "key:*", period = "day", limit = "0.00001" },
          { scope = "key:vip", period = "day", limit = "1" }]
"""
    r = squirrel("ask", "hello", "--no-stream", "--key", "bob", config=cfg)
    assert r.returncode != 0 and "BudgetExceeded" in r.stderr  # the default is tiny
    r = squirrel("ask", "hello", "--no-stream", "--key", "vip", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["budget"] == [
        {"scope": "key:vip", "bucket": json.loads(r.stdout)["budget"][0]["bucket"],
         "remaining_usd": json.loads(r.stdout)["budget"][0]["remaining_usd"]}]
    assert 0.99 < float(json.loads(r.stdout)["budget"][0]["remaining_usd"]) < 1
    (state,) = json.loads(squirrel("budget", "--json", "--key", "vip", config=cfg).stdout)
    assert (state["scope"], state["limit"]) == ("key:vip", "1")


# --- a model is excluded only when the prompt surely does not fit ---------------------------

UNCOUNTED = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["small", "big", "tiny"], tokenizer = false }
models = [{ name = "small", context_window = 8192, price = { input = "0.1", output = "0.1" } },
          { name = "big", context_window = 131072, price = { input = "5", output = "5" } },
          { name = "tiny", context_window = 100, price = { input = "0.1", output = "0.1" } }]
"""


def test_an_uncertain_fit_is_kept_and_ranks_lower(squirrel: Run, tmp_path: Path) -> None:
    # 18,000 characters: an upper bound of 18,025 tokens, but about 4k in any real tokenizer
    prompt = ("Squirrels bury acorns in autumn and find most of them again. " * 300)[:18_000]
    r = squirrel("select", "--json", "--prompt", prompt, config=UNCOUNTED)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert "local/small" not in data["excluded"]
    small = next(c for c in data["candidates"] if c["model"] == "local/small")
    assert small["scores"]["context"] == 0  # may not fit: no headroom credited
    # surely does not fit: even at 128 bytes per token (the longest token of cl100k_base and
    # o200k_base) 18,000 bytes need 141 tokens, and one more for the answer
    assert data["excluded"]["local/tiny"] == "needs at least 142 tokens, context window is 100"


@pytest.mark.anyio
async def test_exclusion_uses_the_exact_count_when_a_tokenizer_knows_the_model(
        squirrel_manager: Callable[..., ModelManager]) -> None:
    from squirrel_models import AIRequest, ModelCard, Price, RequestShape, TokenCount

    from .helpers import provider

    counted = ModelCard.for_provider("p", "counted", provider_type="scripted", context_window=100,
                                     price=Price.free())
    guessed = ModelCard.for_provider("p", "guessed", provider_type="other", context_window=100,
                                     price=Price.free())
    async with squirrel_manager() as mm:
        p = provider("p", counted, guessed)
        for c in p.models:
            mm.register_model(c, p)
        words = AIRequest.from_prompt("nut " * 150, max_tokens=1)  # 152 tokens by word count
        d = mm.rank(request=words)
        assert d.excluded == {"p/counted": "needs 153 tokens, context window is 100"}
        assert [c.card.id for c in d.candidates] == ["p/guessed"]
    shape = RequestShape(500, 1, exact=False, recount=lambda c: TokenCount(499, exact=False),
                         prompt_lower=99)
    assert shape.needed_at_least(guessed) == (100, False)


# --- retry, breaker, policies ---------------------------------------------------------------

FLAKY = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["flaky", "steady"], reply = "nuts", fail = { flaky = 500 } }
models = [{ name = "flaky", price = { input = "0.1", output = "0.1" }, quality = 0.9 },
          { name = "steady", price = { input = "0.2", output = "0.2" }, quality = 0.5 }]
"""


def test_a_500_goes_to_the_healthy_alternative_first(squirrel: Run) -> None:
    r = squirrel("ask", "hello", "--json", config=FLAKY)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    # one failed attempt on flaky, then steady at once: no sleep, no retry of flaky
    assert data["model"] == "local/steady"
    assert [(a["model"], a["outcome"]) for a in data["attempts"]] == [
        ("local/flaky", "error"), ("local/steady", "ok")]


@pytest.mark.anyio
async def test_the_circuit_breaker_can_be_switched_off(squirrel_manager) -> None:
    from squirrel_models import AIRequest, RateLimited, ServerError
    from squirrel_models.fallback import BreakerConfig, CircuitBreakers
    from squirrel_models.testing import Fail

    from .helpers import card, provider

    clock = [0.0]
    off = CircuitBreakers(BreakerConfig(failure_threshold=1, enabled=False), clock=lambda: clock[0])
    for _ in range(10):
        off.failure("p/a", ServerError("down", status_code=500))
    assert not off.is_open("p/a") and off.acquire("p/a")
    off.failure("p/a", RateLimited("slow down", retry_after=2.0))  # the upstream's word holds
    assert off.is_open("p/a")
    clock[0] = 2.5
    assert not off.is_open("p/a")

    p = provider("p", card("a"))
    p.default = Fail(ServerError("down", status_code=500))
    cfg = {"circuit_breaker": {"enabled": False, "failure_threshold": 1},
           "fallback": {"max_attempts": 1}}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(p.models[0], p)
        for _ in range(3):  # never skipped as cooling down: every request reaches the model
            with pytest.raises(ServerError):
                await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
    assert p.calls["a"] == 3


POLICY = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["cheap", "fast", "smart"] }
models = [{ name = "cheap", price = { input = "0.1", output = "0.1" }, latency_ms = 3000, quality = 0.2 },
          { name = "fast", price = { input = "5", output = "5" }, latency_ms = 50, quality = 0.5 },
          { name = "smart", price = { input = "20", output = "20" }, latency_ms = 2000, quality = 0.95 }]
"""


@pytest.mark.parametrize(("policy", "first"), [
    ("cheapest", "local/cheap"), ("fastest", "local/fast"), ("best", "local/smart")])
def test_named_policies(squirrel: Run, policy: str, first: str) -> None:
    r = squirrel("select", "--json", config=POLICY + f'[scoring]\npolicy = "{policy}"\n')
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["candidates"][0]["model"] == first
    cfg = POLICY + '[scoring]\npolicy = "cheapest"\n[scoring.weights]\nquality = 10\n'
    data = json.loads(squirrel("select", "--json", config=cfg).stdout)
    assert data["candidates"][0]["model"] == "local/smart"  # weights override the policy
    assert data["weights"]["cost"] > 0


def test_a_plugin_rule_never_joins_silently(squirrel_plugins, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from squirrel_models import ScoringRule
    from squirrel_models.hookspecs import hookimpl

    class LocalFirst:
        @hookimpl
        def register_scoring_rules(self) -> list[ScoringRule]:
            return [ScoringRule("local_first", lambda card, req, stats, shape: 1.0, 0.5)]

    squirrel_plugins.register(LocalFirst(), "local-first")
    with caplog.at_level(logging.WARNING, logger="squirrel_models"):
        balanced = ModelManager({}, plugins=squirrel_plugins)
        cheapest = ModelManager({"scoring": {"policy": "cheapest"}}, plugins=squirrel_plugins)
        named = ModelManager({"scoring": {"weights": {"local_first": 2}}}, plugins=squirrel_plugins)
    assert balanced.selector.rules["local_first"][1] == 0.5
    assert "local_first" not in cheapest.selector.rules  # off under a single-concern policy
    assert named.selector.rules["local_first"][1] == 2
    said = [r.getMessage() for r in caplog.records if "local_first" in r.getMessage()]
    assert len(said) == 2  # balanced and cheapest; the configured one is a stated choice
    assert "joins with its default weight 0.5" in said[0] and "is off" in said[1]


# --- a [fallback.graph] edge is followed past the routing pins, never past hard limits ------

def test_a_graph_edge_leads_past_the_model_pin(squirrel: Run) -> None:
    cfg = FLAKY + '[requirements]\nmodels = ["local/flaky"]\n' \
                  '[fallback.graph]\n"local/flaky" = ["local/steady"]\n'
    r = squirrel("ask", "hello", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "local/steady"


@pytest.mark.anyio
@pytest.mark.parametrize(("need", "followed"), [
    ({"models": {"p/a"}}, True),
    ({"models": {"p/a"}, "providers": {"p", "q"}, "min_capabilities": {"chat"}}, True),
    ({"providers": {"p"}}, False),  # may be a rule (data residency, contracts): hard
    ({"models": {"p/a"}, "tags": {"eu"}}, False),
    ({"models": {"p/a"}, "required_features": {"tools"}}, False),
    ({"models": {"p/a"}, "max_cost_per_1k_tokens": "0.005"}, False),
    ({"models": {"p/a"}, "exclude_providers": {"q"}}, False),
    ({"models": {"p/a"}, "max_request_cost": "0.00001"}, False),
    # a permission (a gateway key's models), where the pin is a choice
    ({"allowed_models": {"p/a"}}, False),
    ({"models": {"p/a"}, "allowed_models": {"p/a"}}, False),
    ({"models": {"p/a"}, "allowed_models": {"p/a", "q/b"}}, True),
])
async def test_graph_edges_respect_hard_limits(squirrel_manager, need: dict[str, object],
                                               followed: bool) -> None:
    from decimal import Decimal

    from squirrel_models import AIRequest, ModelRequirements, ServerError
    from squirrel_models.testing import Fail

    from .helpers import card, provider

    a = card("a", price=("1", "1"), tags={"eu"}, features={"streaming", "system_prompt", "tools"})
    b = card("b", provider="q", price=("50", "50"))  # no tools, no tags, dear
    p, q = provider("p", a), provider("q", b)
    p.default = Fail(ServerError("down", status_code=500))
    cfg = {"fallback": {"graph": {"p/a": ["q/b"]}, "max_attempts": 2}}
    need = {k: Decimal(v) if isinstance(v, str) else v for k, v in need.items()}
    mm = squirrel_manager(cfg)
    mm.register_model(a, p)  # before start: the graph's names are checked then
    mm.register_model(b, q)
    async with mm:
        request = AIRequest.from_prompt("hi", max_tokens=5)
        if followed:
            assert (await mm.complete(request, ModelRequirements(**need))).model == "q/b"
            async with mm.stream(request, ModelRequirements(**need)) as s:
                assert "".join([c.text async for c in s])
            assert s.response is not None and s.response.model == "q/b"
        else:
            with pytest.raises(SquirrelError) as info:
                await mm.complete(request, ModelRequirements(**need))
            assert q.calls.get("b", 0) == 0, info.value


# --- an unpriced model is used only when the configuration says so --------------------------

DISCOVERED = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["priced", "found"], reply = "nuts" }
models = [{ name = "priced", price = { input = "1", output = "1" }, latency_ms = 900 }]
[scoring]
policy = "fastest"
"""


def test_an_unpriced_model_is_visible_and_used_only_when_allowed(squirrel: Run) -> None:
    # "found" has no price (as a discovered model no price data knows) and no latency prior:
    # a latency-only ranking used to put it first, with no budget to stop it
    r = squirrel("select", "--explain", config=DISCOVERED)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("local/priced")
    assert "local/found: price unknown: set its price in [[providers.models]], or [budget] " \
           "allow_unpriced = true" in r.stdout
    r = squirrel("ask", "hello", "--json", config=DISCOVERED)
    assert json.loads(r.stdout)["model"] == "local/priced"
    alone = DISCOVERED.replace('models = [{ name = "priced"', 'models = [{ name = "other"')
    alone = alone.replace('["priced", "found"]', '["found"]')
    r = squirrel("ask", "hello", "--no-stream", config=alone)
    assert r.returncode != 0 and "UnpricedModel" in r.stderr and "allow_unpriced" in r.stderr
    allowed = DISCOVERED + "[budget]\nallow_unpriced = true\n"
    r = squirrel("select", "--explain", config=allowed)
    assert "local/found (unpriced)" in r.stdout
    data = json.loads(squirrel("select", "--json", config=allowed).stdout)
    assert {c["model"]: c["unpriced"] for c in data["candidates"]} == {
        "local/found": True, "local/priced": False}
