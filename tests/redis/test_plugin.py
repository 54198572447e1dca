"""Discovery through the real entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

from squirrel_models.plugins import PluginManager
from squirrel_models_redis import RedisOptions


def test_plugin_is_installed() -> None:
    pm = PluginManager()
    backends = pm.budget_backends()
    assert "redis" in backends
    assert backends["redis"].options_type is RedisOptions
    info = {i.name: i for i in pm.plugins()}["redis"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-redis"
    assert "register_budget_backends" in info.hooks
    assert "register_ratelimit_stores" in info.hooks
    stores = pm.ratelimit_stores()
    assert stores["redis"].options_type is RedisOptions
    assert "register_breaker_stores" in info.hooks
    assert pm.breaker_stores()["redis"].options_type is RedisOptions
    assert pm.failures == []


def test_exactly_one_entry_point() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-redis"]
    assert [(ep.name, ep.value) for ep in ours] == [("redis", "squirrel_models_redis.plugin")]


def test_public_api() -> None:
    import squirrel_models_redis as pkg

    assert sorted(pkg.__all__) == sorted(n for n in dir(pkg) if not n.startswith("_")
                                         and n not in {"annotations", "budget", "errors", "driver",
                                                       "options", "scripts", "plugin", "fallback",
                                                       "client", "ratelimit", "rlscripts",
                                                       "breakers"})


def test_squirrel_plugins_lists_what_redis_provides() -> None:
    import json

    from click.testing import CliRunner
    from squirrel_models.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for kind in ("budget_backends", "ratelimit_stores", "breaker_stores"):
        assert "redis" in data["provides"][kind], kind
    (row,) = [r for r in data["plugins"] if r["name"] == "redis"]
    assert row["dist"] == "squirrel-models-redis"
