"""Settings the gateway would accept without doing what they say are refused at start-up,
naming the field: a ``key:<name>`` limit that no virtual key's budget key matches (before: the
gateway served, and the limit never applied: spending without the cap it seemed to set); and
any ``[gateway]`` table at all loads or is a ``ConfigError`` naming a ``gateway`` field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models.errors import ConfigError
from squirrel_models_gateway import hash_key
from squirrel_models_gateway.config import load_gateway_config

from ..support.faulty_server import FaultyServer
from .conftest import UPSTREAM_ENV, UPSTREAM_KEY, faulty_config, gateway

FUZZ_ENV = "SQUIRREL_TEST_GATEWAY_FUZZ_KEY"


@pytest.mark.parametrize(("table", "limit", "field"), [
    ("budget", {"scope": "key:team_a", "period": "day", "limit": "5"}, "budget.limits[0].scope"),
    ("budget", {"scope": "key:team-b", "period": "day", "limit": "5"}, "budget.limits[0].scope"),
    ("rate_limits", {"scope": "key:teama", "rpm": 10}, "rate_limits.limits[0].scope"),
], ids=["underscore", "name-not-budget-key", "rate-limit"])
def test_a_key_limit_no_virtual_key_matches_fails_start_up(faulty: FaultyServer, table: str,
                                                           limit: dict[str, object], field: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    cfg = faulty_config(faulty)
    # team-b's budget key is its name; give it another so its name matches nothing
    cfg["gateway"]["keys"][1]["budget_key"] = "b-team"
    cfg[table] = {"limits": [limit]}
    with pytest.raises(ConfigError) as info, gateway(cfg):
        pass
    assert info.value.field == field
    assert "team-a" in str(info.value) and "b-team" in str(info.value)


@pytest.mark.parametrize("scope", ["key:team-a", "key:b-team", "key:*", "key:anon"])
def test_limits_on_known_budget_keys_serve(faulty: FaultyServer, scope: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    cfg = faulty_config(faulty, allow_anonymous=True, anonymous_budget_key="anon")
    cfg["gateway"]["keys"][1]["budget_key"] = "b-team"
    cfg["budget"] = {"limits": [{"scope": scope, "period": "day", "limit": "5"}]}
    with gateway(cfg) as gw:
        assert gw.port > 0


# --- any [gateway] table: a GatewayConfig or a ConfigError naming a gateway field ---------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=20))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=6)
_KEY = st.fixed_dictionaries({"name": st.one_of(st.just("team"), st.text(max_size=70), _VALUES)}, optional={
    "sha256": st.one_of(st.just(hash_key("x")), _VALUES), "key_env": st.one_of(st.just(FUZZ_ENV), _VALUES),
    "budget_key": _VALUES, "models": _VALUES, "max_request_cost": st.one_of(st.just("0.5"), _VALUES),
    "revoked": _VALUES, "extra": _VALUES})
_GATEWAY = st.fixed_dictionaries({}, optional={
    "host": _VALUES, "port": st.one_of(st.integers(-5, 70_000), _VALUES),
    "keys": st.one_of(st.lists(_KEY, max_size=3), _VALUES), "allow_anonymous": _VALUES,
    "anonymous_budget_key": _VALUES,
    "aliases": st.one_of(st.dictionaries(st.text(max_size=8), st.one_of(
        st.text(max_size=8), st.lists(st.text(max_size=8), max_size=3), _VALUES), max_size=3), _VALUES),
    "passthrough": st.one_of(st.lists(st.text(max_size=12), max_size=3), _VALUES),
    "max_body_bytes": _VALUES, "shutdown_timeout": _VALUES, "metrics": _VALUES, "access_log": _VALUES,
    "bogus": _VALUES})


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(_GATEWAY)
def test_any_gateway_table_loads_or_names_a_gateway_field(table: dict[str, object]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FUZZ_ENV, "sqk-fuzz-canary-7e1c9d2b4a")
        error: ConfigError | None = None
        try:
            load_gateway_config(table)
        except ConfigError as exc:
            error = exc
    if error is not None:
        assert error.field and error.field.startswith("gateway"), (error.field, str(error))


@pytest.mark.parametrize("host", ["", " ", "127.0.0.1 ", "local\nhost", "x" * 254])
def test_a_host_that_is_no_address_fails_start_up(host: str) -> None:
    """An empty host listened on every interface (the socket's INADDR_ANY) while the gateway
    announced ``http://:8080/v1``: a gateway meant for this machine served the network."""
    table = {"host": host, "allow_anonymous": True}
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(table)
    assert caught.value.field == "gateway.host"


def test_serve_with_an_empty_host_names_the_option(tmp_path: Path) -> None:
    """The same through ``squirrel serve --host ''``: exit 2 naming the option, nothing served."""
    config = tmp_path / "squirrel.toml"
    config.write_text('[[providers]]\nname = "up"\ntype = "openai"\ndiscover = false\n'
                      'options = { base_url = "http://127.0.0.1:9/v1" }\n'
                      'models = [{ name = "m", price = { input = "1", output = "1" } }]\n'
                      '[gateway]\nallow_anonymous = true\n')
    squirrel = Path(sys.executable).parent / "squirrel"
    out = subprocess.run([str(squirrel), "serve", "--config", str(config), "--host", ""],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "--host" in out.stderr and "Traceback" not in out.stderr
