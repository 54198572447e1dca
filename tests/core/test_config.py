"""Bad configuration fails at start-up with a message that names the offending field."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import Config, ConfigError, ModelManager, Secret, load_config, load_toml
from squirrel_models.config import converter

BAD = [
    ({"timeout": -1}, "timeout", "must be a finite number > 0"),
    ({"timeout": "3"}, "timeout", "expected float, got str"),
    ({"timeout": math.nan}, "timeout", "finite"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"providers": [{"name": "a", "type": "x", "bogus": 1}]}, "providers[0].bogus", "unknown key"),
    ({"providers": [{"name": "a"}]}, "providers[0].type", "required field missing"),
    ({"providers": [{"name": "a/b", "type": "x"}]}, "providers[0].name", "no '/'"),
    ({"providers": [{"name": "a", "type": "x"}, {"name": "a", "type": "y"}]},
     "providers[1].name", "duplicate provider name"),
    ({"providers": [{"name": "a", "type": "x", "models": [{"name": "m", "price": {"input": "x", "output": 1}}]}]},
     "providers[0].models[0].price.input", "'x' is not a decimal number such as 0.05"),
    ({"providers": [{"name": "a", "type": "x", "models": [{"name": "m", "price": {"input": -1, "output": 1}}]}]},
     "providers[0].models[0].price.input", "must be a finite amount >= 0"),
    # a price per token written where USD per million tokens belong (before: accepted, every
    # budget a million times too generous)
    ({"providers": [{"name": "a", "type": "x", "models": [{"name": "m", "price": {"input": "0.0000025",
                                                                                  "output": 10}}]}]},
     "providers[0].models[0].price.input", "is 2.5 per million"),
    # gpt-4o-mini's price per thousand tokens: the message named only the per-token reading
    # (150 per million), a thousand times the real price
    ({"providers": [{"name": "a", "type": "x", "models": [{"name": "m", "price": {"input": "0.00015",
                                                                                  "output": 1}}]}]},
     "providers[0].models[0].price.input", "per thousand tokens 0.15)"),
    ({"providers": [{"name": "a", "type": "x", "models": [{"name": "m", "price": {"input": 2.5, "output": 10,
                                                                                  "cached_input": 6e-7}}]}]},
     "providers[0].models[0].price.cached_input", "not per token"),
    ({"budget": {"limits": [{"scope": "nope", "limit": "1"}]}}, "budget.limits[0].scope", "unknown scope"),
    ({"budget": {"limits": [{"scope": "global", "limit": "abc"}]}}, "budget.limits[0].limit",
     "'abc' is not a decimal number such as 0.05"),
    ({"budget": {"limits": [{"scope": "global", "limit": "NaN"}]}}, "budget.limits[0].limit", "finite"),
    ({"budget": {"limits": [{"scope": "global", "period": "week", "limit": "1"}]}},
     "budget.limits[0].period", "expected one of total, day, month, got 'week'"),
    ({"fallback": {"graph": {"a": ["b"], "b": ["c"], "c": ["a"]}}}, "fallback.graph",
     "fallback cycle a -> b -> c -> a"),
    ({"fallback": {"max_attempts": 0}}, "fallback.max_attempts", "must be in 1..100"),
    ({"scoring": {"weights": {"cost": -1.0}}}, "scoring.weights.cost", ">= 0"),
    ({"requirements": {"max_request_cost": "-1"}}, "requirements.max_request_cost", ">= 0"),
    ({"requirements": {"max_latency_ms": math.nan}}, "requirements.max_latency_ms", "finite"),
    ({"circuit_breaker": {"failure_threshold": 0}}, "circuit_breaker.failure_threshold", ">= 1"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_config_names_the_field(data, field, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(field)


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"timeout": "x", "bogus": 1})
    assert "bogus" in str(info.value)
    assert "timeout" in str(info.value)


@pytest.mark.parametrize(("data", "field"), [
    ({"providers": [{"name": "a", "type": "nonexistent"}]}, "providers[0].type"),
    ({"fallback": {"strategies": ["retry", "teleport"]}}, "fallback.strategies[1]"),
    ({"scoring": {"weights": {"vibes": 1.0}}}, "scoring.weights"),
    ({"budget": {"backend": "mongodb"}}, "budget.backend"),
    ({"fallback": {"options": {"retry": {"max_retriez": 3}}}}, "fallback.options.retry.max_retriez"),
    ({"fallback": {"options": {"retry": {"max_retries": "2"}}}}, "fallback.options.retry.max_retries"),
    ({"fallback": {"options": {"retyr": {}}}}, "fallback.options.retyr"),
    ({"scoring": {"weights": {"cost": 0, "latency": 0, "quality": 0, "context": 0, "reliability": 0, "tags": 0}}},
     "scoring.weights"),
])
def test_unknown_names_fail_at_startup(data, field, squirrel_plugins) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(data, plugins=squirrel_plugins)
    assert info.value.field == field


def test_provider_options_errors_name_the_field(squirrel_plugins) -> None:
    import attrs
    from squirrel_models import ProviderType, hookimpl

    @attrs.frozen
    class Opts:
        base_url: str
        timeout: float = 10.0

    class P:
        @hookimpl
        def register_providers(self):
            return [ProviderType("typed", lambda spec: None, Opts)]  # type: ignore[arg-type,return-value]

    squirrel_plugins.register(P(), "typed")
    with pytest.raises(ConfigError) as info:
        ModelManager({"providers": [{"name": "x", "type": "typed", "options": {"timeout": "slow"}}]},
                     plugins=squirrel_plugins)
    assert info.value.field == "providers[0].options.base_url"
    assert "providers[0].options.timeout" in str(info.value)


def test_missing_environment_variable_names_field(monkeypatch) -> None:
    monkeypatch.delenv("SQUIRREL_TEST_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        Secret.from_env("SQUIRREL_TEST_KEY", field="providers[0].options.api_key_env")
    assert info.value.field == "providers[0].options.api_key_env"
    assert "SQUIRREL_TEST_KEY is not set" in str(info.value)


def test_an_empty_environment_variable_is_said_to_be_empty(monkeypatch) -> None:
    """``export OPENAI_API_KEY=`` (a key that did not paste) was reported as "not set", and
    ``env | grep`` showed it set."""
    monkeypatch.setenv("SQUIRREL_TEST_KEY", "")
    with pytest.raises(ConfigError) as info:
        Secret.from_env("SQUIRREL_TEST_KEY", field="providers[0].options.api_key_env")
    assert "environment variable SQUIRREL_TEST_KEY is set but empty" in str(info.value)


def test_toml_errors_name_file_and_line(tmp_path) -> None:
    bad = tmp_path / "squirrel.toml"
    bad.write_text("timeout = 3\n[budget\nbackend = 'memory'\n")
    with pytest.raises(ConfigError, match=r"squirrel.toml: invalid TOML: .*line 2"):
        load_toml(bad)
    # tomllib names no line for what is still open at the end: "(at end of document)"
    bad.write_text('timeout = 3\n[budget]\nbackend = """memory\n')
    with pytest.raises(ConfigError, match=r"squirrel.toml: invalid TOML: .*ends at line 4"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000 + "]" * 100_000,
                                  "[budget]\nlimits = " + "[" * 2_000 + "]" * 2_000,
                                  "x = " + "{ y = " * 5_000 + "1" + " }" * 5_000])
def test_toml_nested_too_deeply_is_a_config_error(tmp_path, text: str) -> None:
    """tomllib reads nesting by recursion: a file nested thousands deep raised RecursionError
    (``squirrel`` printed "internal error ... please report it")."""
    f = tmp_path / "squirrel.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"squirrel.toml: invalid TOML: .*nested too deeply"):
        load_toml(f)


def test_a_table_written_inline_then_extended_says_so(tmp_path) -> None:
    """The quick start writes ``limits = [...]`` in ``[budget]``; the gateway and budget pages
    show ``[[budget.limits]]`` tables. A user who pastes one under the other got tomllib's
    "Cannot mutate immutable namespace" alone."""
    f = tmp_path / "squirrel.toml"
    f.write_text('[budget]\nlimits = [{ scope = "global", limit = "1" }]\n\n'
                 '[[budget.limits]]\nscope = "key:a"\nlimit = "1"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(f)
    message = str(info.value)
    assert "budget.limits" in message and "line 4" in message
    assert "written inline" in message and "[[budget.limits]]" in message


def test_a_line_break_inside_an_inline_table_says_so(tmp_path) -> None:
    """The openai README's example had one: tomllib says "Invalid initial character for a key
    part (at line 5, column 52)", which does not tell a newcomer what to change."""
    f = tmp_path / "squirrel.toml"
    f.write_text('[[providers]]\nname = "local"  # {\ntype = "openai"\n'
                 'options = { base_url = "http://127.0.0.1:8080/v1" }\n'
                 'models = [{ name = "smollm2", context_window = 2048,\n'
                 '            features = ["+tools"] }]\n')
    with pytest.raises(ConfigError, match=r"line 5.*a line break inside an inline table"):
        load_toml(f)
    f.write_text('[budget\nbackend = "memory"\n')  # another mistake: no such hint
    with pytest.raises(ConfigError) as info:
        load_toml(f)
    assert "inline table" not in str(info.value)


@pytest.mark.parametrize("line", [
    'options = { base_url = "http://h/v1\\ud800" }',  # an escape that is no character
    'options = { base_url = "http://h/v1", = 1 }',  # a key left out
    'options = { "a\u2028b" = 1, x = }',  # a value left out, after a Unicode line separator
])
def test_a_mistake_inside_a_one_line_inline_table_gets_no_line_break_hint(tmp_path, line) -> None:
    """The hint said "a line break inside an inline table is not TOML" for any mistake
    inside an inline table written on one line (a bad escape, a missing key or value): the
    fuzzed configurations found it sending users after a line break they never wrote."""
    f = tmp_path / "squirrel.toml"
    f.write_text(f'[[providers]]\nname = "p"\ntype = "openai"\n{line}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_toml(f)
    assert "line 4" in str(info.value) and "line break" not in str(info.value), str(info.value)


def test_toml_loads(tmp_path) -> None:
    f = tmp_path / "squirrel.toml"
    f.write_text("""
timeout = 30
[[providers]]
name = "local"
type = "scripted"
[[providers.models]]
name = "echo"
price = { input = 0, output = 0 }
[budget]
backend = "memory"
[[budget.limits]]
scope = "key:*"
period = "day"
limit = "0.50"
[fallback.graph]
"local/echo" = ["other/model"]
""")
    cfg = load_toml(f)
    assert cfg.timeout == 30.0
    assert cfg.providers[0].models[0].price.input == 0
    assert cfg.budget.limits[0].limit == Decimal("0.50")


money = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False)
configs = st.fixed_dictionaries({
    "timeout": st.floats(min_value=0.01, max_value=3600, allow_nan=False),
    "budget": st.fixed_dictionaries({
        "limits": st.lists(st.fixed_dictionaries({
            "scope": st.sampled_from(["global", "provider:a", "model:a/b", "key:*", "key:team"]),
            "period": st.sampled_from(["total", "day", "month"]),
            "limit": money.map(str),
        }), max_size=4),
        "allow_unpriced": st.booleans(),
    }),
    "fallback": st.fixed_dictionaries({"max_attempts": st.integers(1, 100)}),
    "scoring": st.fixed_dictionaries({"weights": st.dictionaries(
        st.sampled_from(["cost", "latency", "quality"]), st.floats(0, 10, allow_nan=False))}),
})


@given(configs)
@settings(max_examples=60, deadline=None)
def test_config_round_trips(data) -> None:
    cfg = load_config(data)
    again = load_config(converter.unstructure(cfg))
    assert again == cfg


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=10))
@settings(max_examples=200, deadline=None)
def test_garbage_gives_config_error_never_a_traceback(data) -> None:
    try:
        cfg = load_config({"providers": data} if not isinstance(data, dict) else data)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = "ok"
        assert isinstance(cfg, Config)
    assert message


@pytest.mark.parametrize("value", ["x", 3, [1], True])
@pytest.mark.parametrize("path", [("fallback",), ("budget",), ("circuit_breaker",), ("scoring",),
                                  ("requirements",), ("telemetry",), ("rate_limits",),
                                  ("budget", "limits", 0), ("rate_limits", "limits", 0),
                                  ("providers", 0, "models", 0),
                                  ("providers", 0, "models", 0, "price")])
def test_a_value_where_a_table_belongs_says_so(path, value) -> None:
    """A string, number or list where a section belongs failed with Python's own words
    ("'str' object has no attribute 'keys'", "argument of type 'int' is not iterable"),
    which name no mistake a user made (found by fuzzing whole configurations)."""
    data: dict = {"providers": [{"name": "a", "type": "scripted",
                                 "models": [{"name": "m", "price": {"input": "1", "output": "1"}}]}],
                  "budget": {"limits": [{"scope": "global", "limit": "1"}]},
                  "rate_limits": {"limits": [{"scope": "global", "rpm": 1}]}}
    node: Any = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as info:
        load_config(data)
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert info.value.field == field
    assert str(info.value) == f"{field}: expected a table, got {type(value).__name__} {value!r}"


BIG = "x" * 100_000


@pytest.mark.parametrize("data", [
    {"budget": {"limits": [{"scope": "global", "limit": BIG}]}},
    {"budget": {"limits": [{"scope": BIG, "limit": "1"}]}},
    {"scoring": {"spread_by": BIG}},
    {BIG: 1},
    {"fallback": {"graph": {BIG: 1}}},
    {"requirements": {"max_request_cost": [BIG]}},
], ids=["amount", "scope", "choice", "key", "graph-key", "in-a-list"])
def test_a_huge_value_is_not_repeated_whole(data) -> None:
    """A 100 KB string where a number, a scope or a choice belongs (or as a key) came back
    whole in the error, a 100 KB line: each problem's path and message are bounded."""
    with pytest.raises(ConfigError) as info:
        load_config(data)
    text = str(info.value)
    # the size is said: "... (100,000 characters)", or for a number "is 100,000 characters long"
    assert len(text) < 500 and ("(100,0" in text or "100,000 characters" in text), text[:300]


def test_a_thousand_problems_list_ten() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({f"bogus{i}": 1 for i in range(1000)})
    assert str(info.value).count("unknown key") == 10 and str(info.value).endswith("and 990 more")


@pytest.mark.parametrize("place", ["timeout", "nested", "key", "dsn"])
def test_a_password_in_a_url_never_shows_in_a_config_error_whatever_the_field(place: str) -> None:
    """A URL holding a password, pasted where it does not belong, is quoted by the error that
    names the field: its password was registered only once the field meant for it was read,
    which a mistake anywhere else could come before (found by tests/reliability/
    test_config_fuzz.py). A fresh password each time: registration lasts the process."""
    import secrets as random_source
    import traceback

    password = "Pw-" + random_source.token_hex(8)
    url = f"http://user:{password}@127.0.0.1:9/v1"
    config: dict[str, Any] = {
        "timeout": {"timeout": url},
        "nested": {"timeout": [{"a": (1, url)}]},
        "key": {"timeout": {url: 1}},
        "dsn": {"timeout": f"host=db password={password} user=x"},
    }[place]
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value) + repr(caught.value) + "".join(traceback.format_exception(caught.value))
    assert "timeout" in text
    assert password not in text
    assert password[3:12] not in text  # nor a fragment of it


def test_an_amount_of_minus_zero_is_zero() -> None:
    """A price (or limit) written "-0" priced every answer at -0, shown as such in the
    cost header, the ledger and the CLI (found by the attack pass)."""
    from squirrel_models.types import Price, Usage

    price = Price("-0", -0.0, cached_input="-0.000")
    assert not any(p.is_signed() for p in (price.input, price.output, price.cached_input))
    assert not price.cost(Usage(10, 10)).is_signed()
