"""``squirrel usage``, ``squirrel budget`` and ``squirrel ledger prune`` (the core CLI) over the
Redis ledger, filled through ModelManager end to end."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli
from squirrel_models.manager import ModelManager
from squirrel_models_redis import RedisBudgetBackend

from tests.support import budget_cli
from tests.support.budget_cli import WithScripted, run

from .redisserver import PASSWORD, RedisServer, free_port

ENV = "SQUIRREL_TEST_REDIS_URL"


def write_config(tmp_path: Path, prefix: str) -> Path:
    options = f'{{ url_env = "{ENV}", key_prefix = "{prefix}", connect_timeout_s = 1 }}'
    return budget_cli.write_config(tmp_path, "redis", options)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer,
           prefix: str) -> Path:
    monkeypatch.setattr("squirrel_models.plugins.PluginManager", WithScripted)
    monkeypatch.setenv(ENV, redis_server.url)
    path = write_config(tmp_path, prefix)

    async def fill() -> None:
        async with ModelManager.from_toml(path, plugins=WithScripted()) as mm:
            assert isinstance(mm.budget_backend, RedisBudgetBackend)
            await budget_cli.send_three_requests(mm)
            assert (await mm.budget_backend.audit())["open"] == 0

    anyio.run(fill)
    return path


def test_usage_by_model_as_json(config: Path) -> None:
    budget_cli.assert_usage_by_model(config)
    table = run("usage", "--config", str(config), "--by", "provider")
    assert table.splitlines()[1].split()[:3] == ["p", "3", "5"]


def test_budget_command_reads_the_same_store(config: Path) -> None:
    (state,) = json.loads(run("budget", "--config", str(config), "--json"))
    assert state["scope"] == "global" and Decimal(state["committed"]) > 0
    assert Decimal(state["reserved"]) == 0
    usage = json.loads(run("usage", "--config", str(config), "--format", "json"))
    assert Decimal(state["committed"]) == sum(Decimal(r["cost_usd"]) for r in usage)


def test_unreachable_redis_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             prefix: str) -> None:
    monkeypatch.setattr("squirrel_models.plugins.PluginManager", WithScripted)
    monkeypatch.setenv(ENV, f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(cli, ["budget", "--config", str(write_config(tmp_path, prefix))])
    assert result.exit_code == 1
    assert "RedisUnavailable" in result.output
    assert PASSWORD not in result.output


def test_ledger_prune_removes_rows_and_keeps_budgets(config: Path) -> None:
    budget_cli.assert_prune_keeps_budgets(config)
