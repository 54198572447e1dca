"""Any configuration, built from the real schema, loads or fails with a ConfigError naming the
offending field, never another exception and never a secret.

The base documents hold every section (providers of every plugin: openai, huggingface and
llama-local with their options and models; the budget on each durable backend: sqlite,
postgres, redis; fallback, circuit breaker, scoring, requirements, telemetry, rate limits and
the gateway with its keys), and secrets in the environment variables the options name (API
keys, DSNs with passwords). Hypothesis replaces values anywhere (wrong types, out-of-range
numbers, NaN and infinities, empty, huge and unicode strings, and secrets where a careless
user puts them: a password in a URL, a key in a header or any value), deletes keys and adds
unknown ones, and the result goes through the dict path (``build``: the gateway and the manager) and the TOML path
(a document written out and read by ``ModelManager.from_toml``)."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import ModelManager
from squirrel_models.errors import ConfigError
from squirrel_models_gateway import build, hash_key

from ..support import secret_scanner
from ..support.upstream_fuzz import paths
from .conftest import figure

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: Secrets the documents hold: each must stay out of every message.
URL_PASSWORD = secret_scanner.canary("urlpw-4c9e1b7d2a6f")
HEADER_KEY = secret_scanner.canary("sk-hdr-8d3f6a1c9e2b7540")
PG_PASSWORD = secret_scanner.canary("pgpw-7b2e9d4c1a6f3e80")
REDIS_PASSWORD = secret_scanner.canary("rdpw-1e6a9c3d7b2f4e51")
HF_TOKEN = secret_scanner.canary("hf_fuzzT0ken5e2b8c1d9a")
GATEWAY_KEY = secret_scanner.canary("sqk-cfgfuzz-3a7d1e9c5b")
SECRETS = (URL_PASSWORD, HEADER_KEY, PG_PASSWORD, REDIS_PASSWORD, HF_TOKEN, GATEWAY_KEY)
ENV = {"FUZZ_OPENAI_KEY": HEADER_KEY, "FUZZ_HF_TOKEN": HF_TOKEN, "FUZZ_GATEWAY_KEY": GATEWAY_KEY,
       "FUZZ_PG_URL": f"postgresql://squirrel:{PG_PASSWORD}@127.0.0.1:9/postgres",
       "FUZZ_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:9/0"}

BASE = {
    "timeout": 30.0, "attempt_timeout": 10.0, "default_max_tokens": 256, "strict_plugins": False,
    "providers": [
        {"name": "oa", "type": "openai", "discover": False, "enabled": True,
         "options": {"base_url": "http://127.0.0.1:9/v1",
                     "api_key_env": "FUZZ_OPENAI_KEY", "timeout": 5.0, "connect_timeout": 2.0,
                     "max_connections": 10, "headers": {"X-Trace": "1"},
                     "extra_body": {"seed": 1}, "max_tokens_field": "max_tokens",
                     "stream_usage": True, "prices_from": None, "transport": "auto"},
         "models": [{"name": "m", "context_window": 4096, "max_output_tokens": 512,
                     "price": {"input": "1", "output": "2"}, "features": ["streaming", "tools"],
                     "capabilities": ["chat"]}]},
        {"name": "hf", "type": "huggingface", "discover": False,
         "options": {"base_url": "http://127.0.0.1:9/v1", "token_env": "FUZZ_HF_TOKEN",
                     "timeout": 5.0, "headers": {"X-Trace": "1"}, "stream_usage": False},
         "models": [{"name": "h", "context_window": 2048, "price": {"input": "0", "output": "0"}}]},
        {"name": "local", "type": "llama-local",
         "options": {"models": ["MODEL"], "n_ctx": 512, "n_threads": 1, "n_batch": 64,
                     "idle_unload_s": 60.0, "max_queue": 4, "seed": 1, "download": False}},
    ],
    "budget": {"limits": [{"scope": "global", "period": "day", "limit": "10"},
                          {"scope": "key:team", "period": "total", "limit": "1.5"}],
               "allow_unpriced": True, "reservation_ttl": 60.0},
    "fallback": {"max_attempts": 3, "strategies": ["retry", "next_candidate"],
                 "options": {"retry": {"base_delay": 0.01}}, "graph": {"oa/m": ["hf/h"]}},
    "circuit_breaker": {"failure_threshold": 3, "base_cooldown": 1.0, "max_cooldown": 60.0,
                        "enabled": True, "sync_interval": 1.0},
    "scoring": {"policy": "balanced", "weights": {"cost": 1.0}, "spread": True,
                "spread_margin": 0.1, "spread_by": "in_flight", "spread_seed": 3},
    "requirements": {"min_context_window": 1024, "max_latency_ms": 5000.0,
                     "max_request_cost": "0.5", "exclude_providers": ["none"]},
    "telemetry": {"service_name": "fuzz"},  # export_interval_s alone is refused: it needs otlp_endpoint
    "rate_limits": {"limits": [{"scope": "global", "rpm": 60}], "max_wait": 1.0,
                    "upstream": True, "quota_cooldown": 30.0},
    "gateway": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 65536, "shutdown_timeout": 5.0,
                "keys": [{"name": "team", "key_env": "FUZZ_GATEWAY_KEY", "budget_key": "team",
                          "models": ["oa/m"], "max_request_cost": "0.5"},
                         {"name": "other", "sha256": hash_key("sqk-other-key-0")}],
                "aliases": {"cheap": "oa/m"}, "allow_anonymous": False, "metrics": True},
}
BACKENDS = {
    "sqlite": {"path": "budget.sqlite3", "busy_timeout_s": 5.0, "synchronous": "NORMAL",
               "connections": "shared", "expired_retention_s": 3600.0, "ledger_retention_days": 30},
    "postgres": {"url_env": "FUZZ_PG_URL", "schema": "fuzz", "min_connections": 1,
                 "max_connections": 4, "connect_timeout_s": 1.0, "operation_timeout_s": 2.0,
                 "startup_timeout_s": 3.0, "driver": "auto", "ledger_retention_days": 7},
    "redis": {"url_env": "FUZZ_REDIS_URL", "key_prefix": "fuzz", "max_connections": 4,
              "connect_timeout_s": 1.0, "operation_timeout_s": 1.0, "on_unavailable": "fail_closed",
              "driver": "auto", "unavailable_retry_s": 1.0},
}


def base(backend: str, model: str = "tiny.gguf") -> dict[str, Any]:
    """The base document on ``backend``; ``model``: the llama-local provider's GGUF file."""
    data = copy.deepcopy(BASE)
    data["providers"][2]["options"]["models"] = [model]
    data["budget"]["backend"] = backend
    data["budget"]["options"] = copy.deepcopy(BACKENDS[backend])
    if backend == "redis":  # the shared stores on the same server
        data["rate_limits"].update(store="redis", options={"url_env": "FUZZ_REDIS_URL"})
        data["circuit_breaker"].update(shared="redis", shared_options={"url_env": "FUZZ_REDIS_URL"})
    return data


PATHS = sorted({p for b in BACKENDS for p in paths(base(b)) if p}, key=repr)
TABLES = sorted({p[:-1] for p in PATHS}, key=repr)
SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.0, -0.0, 1e-300, 1e308, 2**63, -(2**63) - 1, math.nan, math.inf,
                     -math.inf, "", " ", "0", "-1", "nan", "inf", "1e999", "NaN", "\x00", "é",
                     "☃" * 3, "\u202e", "x" * 100_000, "../../etc/passwd", "key:", "global",
                     "http://", "postgresql://u:p@/", "redis://", "FUZZ_OPENAI_KEY",
                     # secrets where a careless user puts them: the message must not repeat them
                     f"http://user:{URL_PASSWORD}@127.0.0.1:9/v1", f"https://h/v1?key={URL_PASSWORD}",
                     f"Bearer {HEADER_KEY}", ENV["FUZZ_PG_URL"], ENV["FUZZ_REDIS_URL"], HF_TOKEN]),
    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
#: Edits: replace a value, delete a key (or item), add an unknown key to a table.
EDITS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(TABLES), st.text(min_size=1, max_size=10)))
COUNTS = {"loaded": 0, "config_errors": 0, "toml_documents": 0}


def _apply(data: dict[str, Any], edit: tuple[str, tuple[Any, ...], Any]) -> None:
    kind, path, value = edit
    node: Any = data
    for p in (path if kind == "add" else path[:-1]):
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            return  # an earlier edit removed or replaced the way there
    if kind == "add":
        if isinstance(node, dict) and value not in node:
            node[value] = 1
        return
    last = path[-1]
    if isinstance(node, dict) and kind == "delete":
        node.pop(last, None)
    elif isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
        if kind == "delete":
            del node[last]
        else:
            node[last] = value


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML also refuses DEL unescaped
    and a surrogate pair written as two escapes."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    """``data`` as a TOML document: each top-level key on a line of its own, inline below."""
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in data.items() if v is not None)


def check_error(exc: ConfigError) -> None:
    """A field path, named in the message; no secret; no traceback."""
    text = str(exc)
    secret_scanner.collect(text)
    assert "invalid TOML" not in text, text  # the writer writes TOML: a field must be at fault
    assert exc.field, repr(exc)
    assert exc.field in text, (exc.field, text)
    assert not any(s in text for s in SECRETS), text
    assert "Traceback" not in text


def start_up(data: dict[str, Any]) -> None:
    """The gateway's start-up: load the configuration, build the manager and the app."""
    try:
        build(data)
    except ConfigError as exc:
        COUNTS["config_errors"] += 1
        check_error(exc)
    else:
        COUNTS["loaded"] += 1


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ..llama_local.tinygguf import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def env(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SQUIRREL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # relative paths (the budget file, the model) land here
    (tmp_path / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    return tmp_path


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_the_base_documents_load(env: Path, backend: str) -> None:
    build(base(backend))
    text = toml_document(base(backend))
    assert toml_document(tomllib.loads(text)) == text  # the writer writes what TOML reads back
    (env / "squirrel.toml").write_text(text, encoding="utf-8")
    ModelManager.from_toml(env / "squirrel.toml")


@FUZZ
@given(backend=st.sampled_from(list(BACKENDS)), edits=st.lists(EDITS, min_size=1, max_size=4))
def test_any_edited_configuration_loads_or_names_the_field(env: Path, backend: str,
                                                            edits: list[Any]) -> None:
    data = base(backend)
    for edit in edits:
        _apply(data, edit)
    start_up(data)


@settings(FUZZ, max_examples=150)
@given(backend=st.sampled_from(list(BACKENDS)), edits=st.lists(EDITS, min_size=1, max_size=3))
def test_any_toml_document_loads_or_names_the_field(env: Path, backend: str, edits: list[Any]) -> None:
    data = base(backend)
    for edit in edits:
        _apply(data, edit)
    path = env / "squirrel.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    COUNTS["toml_documents"] += 1
    try:
        ModelManager.from_toml(path)
    except ConfigError as exc:
        check_error(exc)


def test_figures() -> None:
    figure("fuzzed_configurations", **COUNTS)
