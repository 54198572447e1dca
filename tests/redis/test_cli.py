"""``squirrel usage``, ``squirrel budget`` and ``squirrel ledger prune`` (the core CLI) over the
Redis ledger, filled through ModelManager end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models_redis import RedisBudgetBackend

from tests.support import budget_cli
from tests.support.ports import closed_port

from .redisserver import PASSWORD, RedisServer

ENV = "SQUIRREL_TEST_REDIS_URL"


def write_config(tmp_path: Path, prefix: str) -> Path:
    options = f'{{ url_env = "{ENV}", key_prefix = "{prefix}", connect_timeout_s = 1 }}'
    return budget_cli.write_config(tmp_path, "redis", options)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer,
           prefix: str) -> Path:
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, redis_server.url)
    path = write_config(tmp_path, prefix)
    budget_cli.fill_ledger(path, RedisBudgetBackend)
    return path


def test_usage_by_model_as_json(config: Path) -> None:
    budget_cli.assert_usage_by_model(config)
    budget_cli.assert_usage_by_provider(config)


def test_budget_command_reads_the_same_store(config: Path) -> None:
    budget_cli.assert_budget_matches_usage(config)


def test_unreachable_redis_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             prefix: str) -> None:
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0")
    budget_cli.assert_unreachable_is_one_line(write_config(tmp_path, prefix), "RedisUnavailable",
                                              PASSWORD)


def test_ledger_prune_removes_rows_and_keeps_budgets(config: Path) -> None:
    budget_cli.assert_prune_keeps_budgets(config)


@pytest.mark.parametrize("command", ["usage", "ask", "budget"])
def test_the_cli_on_a_hung_server_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      own_server: RedisServer, prefix: str,
                                                      command: str) -> None:
    """The server SIGSTOPped: it takes the connection and the commands, and never answers."""
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, own_server.url)
    config = write_config(tmp_path, prefix)
    budget_cli.fill_ledger(config, RedisBudgetBackend)
    own_server.pause()
    try:
        budget_cli.hung_store_outputs(config, command)
    finally:
        own_server.resume()
