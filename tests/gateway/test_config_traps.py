"""Settings the gateway would accept without doing what they say are refused at start-up,
naming the field: a ``key:<name>`` limit that no virtual key's budget key matches (before: the
gateway served, and the limit never applied: spending without the cap it seemed to set)."""

from __future__ import annotations

import pytest
from squirrel_models.errors import ConfigError

from ..support.faulty_server import FaultyServer
from .conftest import UPSTREAM_ENV, UPSTREAM_KEY, faulty_config, gateway


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
