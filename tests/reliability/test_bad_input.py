"""Bad configuration fails at start-up with a ConfigError naming the field (or the file); bad
requests fail with a typed error before any upstream call."""

from __future__ import annotations

import copy
import math
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, ModelManager, ModelRequirements
from squirrel_models.config import load_config, load_toml
from squirrel_models.errors import ConfigError, InvalidRequest, SquirrelError

from ..support.faulty_server import FaultyServer
from . import compose
from .conftest import figure

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
BASE = """\
timeout = 2.0
[[providers]]
name = "alpha"
type = "openai"
discover = false
[providers.options]
base_url = "http://127.0.0.1:9/v1"
timeout = 0.5
[[providers.models]]
name = "ok"
context_window = 4096
price = { input = "1", output = "2" }
[budget]
backend = "memory"
limits = [{ scope = "global", limit = "10" }]
[fallback]
max_attempts = 3
strategies = ["retry", "next_candidate"]
[fallback.graph]
"alpha/ok" = ["alpha/other"]
[circuit_breaker]
failure_threshold = 3
"""
BASE_DATA = tomllib.loads(BASE)
COUNTS = {"malformed_toml": 0, "wrong_types": 0, "unknown_keys": 0, "cycles": 0, "missing_env": 0}


def start_up(data: dict[str, Any]) -> None:
    """What a program does at start-up: load the configuration and build the manager."""
    ModelManager(data)


def check(exc: ConfigError, *names: str) -> None:
    """The error names the offending field and does not come from deep inside."""
    assert exc.field, exc
    assert any(n in str(exc) for n in names), (names, str(exc))
    assert "Traceback" not in str(exc) and "\n" not in str(exc).split(": also")[0]


# --- malformed TOML ------------------------------------------------------------------------

@SETTINGS
@given(st.data())
def test_malformed_toml_names_the_file(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    text = BASE
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.sampled_from(['"', "[", "]", "=", "\n", "{", "}", ",", "'''", "x = ", "\x00", "é"]))
        cut = data.draw(st.integers(0, 3))
        text = text[:i] + junk + text[i + cut:]
    path = tmp_path_factory.mktemp("toml") / "squirrel.toml"
    path.write_text(text, encoding="utf-8")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        with pytest.raises(ConfigError) as info:
            load_toml(path)
        assert str(path) in str(info.value) and "line" in str(info.value)
        COUNTS["malformed_toml"] += 1
        return
    try:  # still TOML: either a valid configuration or an error naming a field
        start_up(tomllib.loads(text))
    except ConfigError as exc:
        check(exc, *(exc.field or "",))


# --- wrong types and unknown keys ----------------------------------------------------------

def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            if k != "graph":
                out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _dotted(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


PATHS = _paths(BASE_DATA)
WRONG = st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                  st.text(max_size=8), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


@SETTINGS
@given(st.sampled_from(PATHS), WRONG)
def test_wrong_types_name_the_field(path: tuple[Any, ...], value: Any) -> None:
    original: Any = BASE_DATA
    for p in path:
        original = original[p]
    if type(value) is type(original) or (isinstance(original, float) and type(value) is int):
        return
    data = copy.deepcopy(BASE_DATA)
    _set(data, path, value)
    try:
        start_up(data)
    except ConfigError as exc:
        COUNTS["wrong_types"] += 1
        # The field named is the one changed, or (a wrong container) its parent.
        check(exc, _dotted(path), _dotted(path[:-1]) or _dotted(path))


TABLES = [(), ("providers", 0), ("providers", 0, "options"), ("providers", 0, "models", 0),
          ("providers", 0, "models", 0, "price"), ("budget",), ("budget", "limits", 0), ("fallback",),
          ("circuit_breaker",)]


@SETTINGS
@given(st.sampled_from(TABLES), st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
def test_unknown_keys_name_the_field(table: tuple[Any, ...], key: str) -> None:
    data = copy.deepcopy(BASE_DATA)
    node: Any = data
    for p in table:
        node = node[p]
    if key in node:
        return
    node[key] = 1
    with pytest.raises(ConfigError) as info:
        start_up(data)
    COUNTS["unknown_keys"] += 1
    check(info.value, _dotted((*table, key)))


@SETTINGS
@given(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True), st.data())
def test_cyclic_fallback_graphs_fail_at_start_up(cycle: list[str], data: st.DataObject) -> None:
    graph: dict[str, list[str]] = {f"alpha/{a}": [f"alpha/{b}"] for a, b in zip(cycle, [*cycle[1:], cycle[0]],
                                                                                     strict=True)}
    extra = data.draw(st.dictionaries(st.sampled_from(["alpha/x", "alpha/y"]),
                                      st.lists(st.sampled_from(["alpha/z"]), max_size=1), max_size=2))
    graph.update(extra)
    cfg = copy.deepcopy(BASE_DATA)
    cfg["fallback"]["graph"] = graph
    with pytest.raises(ConfigError) as info:
        start_up(cfg)
    COUNTS["cycles"] += 1
    check(info.value, "fallback.graph")
    assert "cycle" in str(info.value)


def test_missing_environment_variable_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQUIRREL_NO_SUCH_KEY", raising=False)
    cfg = copy.deepcopy(BASE_DATA)
    cfg["providers"][0]["options"]["api_key_env"] = "SQUIRREL_NO_SUCH_KEY"
    with pytest.raises(ConfigError) as info:
        start_up(cfg)
    check(info.value, "api_key_env")
    assert "SQUIRREL_NO_SUCH_KEY" in str(info.value)
    COUNTS["missing_env"] += 1
    with pytest.raises(ConfigError):  # the budget backend's own options too
        load_config({"budget": {"backend": "sqlite", "options": {"path": ""}}}) and start_up(
            {"budget": {"backend": "sqlite", "options": {"path": ""}}})
    figure("bad_config", **COUNTS)


# --- bad requests ------------------------------------------------------------------------

def _bad_requests() -> list[Any]:
    return [
        lambda: AIRequest(messages=()),
        lambda: AIRequest(messages=("hello",)),
        lambda: AIRequest.from_prompt("hi", max_tokens=0),
        lambda: AIRequest.from_prompt("hi", max_tokens=-1),
        lambda: AIRequest.from_prompt("hi", max_tokens=10**12),
        lambda: AIRequest.from_prompt("hi", max_tokens=2.5),
        lambda: AIRequest.from_prompt("hi", temperature=math.nan),
        lambda: ModelRequirements(max_request_cost=Decimal("-1")),
        lambda: ModelRequirements(max_request_cost=math.nan),
        lambda: ModelRequirements(max_cost_per_1k_tokens=-0.5),
        lambda: ModelRequirements(max_cost_per_1k_tokens=math.inf),
        lambda: ModelRequirements(max_latency_ms=math.nan),
        lambda: ModelRequirements(min_context_window=-3),
    ]


@pytest.mark.anyio
async def test_bad_requests_fail_before_any_upstream_call(faulty: FaultyServer, canary_env: str, tmp_path: Path,
                                                          squirrel_manager: Any) -> None:
    refused = 0
    for make in _bad_requests():
        with pytest.raises(InvalidRequest) as info:
            make()
        assert info.value.field
        refused += 1
    good = AIRequest.from_prompt("hi", max_tokens=8)
    async with squirrel_manager(compose.config(faulty, str(tmp_path / "b.sqlite3"))) as mm:
        for call in [
            lambda: mm.complete(good, ModelRequirements(required_features={"telepathy"})),
            lambda: mm.complete(good, timeout=-1),
            lambda: mm.complete(good, timeout=math.nan),
            lambda: mm.complete("hello"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(InvalidRequest) as info:
                await call()
            assert info.value.field
            refused += 1
        with pytest.raises(SquirrelError):  # a model id nobody serves: typed, no call
            await mm.complete(good, ModelRequirements(models={"nobody/none"}))
        with pytest.raises(InvalidRequest):
            async with mm.stream(good, timeout=0) as s:
                async for _ in s:
                    pass
        refused += 2
    assert faulty.requests == 0
    figure("bad_requests", refused=refused, upstream_requests=faulty.requests)


@pytest.mark.anyio
async def test_failed_start_up_closes_the_sessions_it_opened(faulty: FaultyServer) -> None:
    """Provider ``up`` opens its pooled HTTP session listing models; ``down`` then fails the
    start-up. The session of ``up`` is closed before the error is raised, not left for the
    garbage collector ("Unclosed client session")."""
    import gc

    cfg = {"providers": [
        {"name": "up", "type": "openai", "options": {"base_url": faulty.base_url, "prices_from": None}},
        {"name": "down", "type": "openai", "options": {"base_url": "http://127.0.0.1:9/v1", "timeout": 0.5,
                                                       "connect_timeout": 0.5}}]}
    mm = ModelManager(cfg)
    up = mm.providers["up"]
    opened: list[Any] = []
    make = up._http  # type: ignore[attr-defined]

    def remember() -> Any:
        engine = make()
        opened.append(engine)
        return engine

    up._http = remember  # type: ignore[attr-defined]
    with pytest.raises(SquirrelError):
        async with mm:
            pass
    assert opened, "the provider never opened a session"
    for engine in opened:
        session = getattr(engine, "session", None)  # aiohttp's ClientSession (asyncio)
        assert session.closed if session is not None else engine.client.is_closed  # else httpx's client
    gc.collect()  # an unclosed session would warn here, and warnings are errors
    figure("bad_start_up", sessions_left_open=0)
