"""``squirrel usage`` and ``squirrel budget`` (the core CLI) over the PostgreSQL ledger, and one
request through ModelManager end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models_postgres_budget import PostgresBudgetBackend

from tests.support import budget_cli
from tests.support.ports import closed_port

from .pgserver import PASSWORD, PgServer

ENV = "SQUIRREL_TEST_PG_URL"


def write_config(tmp_path: Path, schema: str) -> Path:
    options = f'{{ url_env = "{ENV}", schema = "{schema}", connect_timeout_s = 1 }}'
    return budget_cli.write_config(tmp_path, "postgres", options)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PgServer, schema: str) -> Path:
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, pg_server.url)
    path = write_config(tmp_path, schema)
    budget_cli.fill_ledger(path, PostgresBudgetBackend)
    return path


def test_usage_by_model_as_json(config: Path) -> None:
    budget_cli.assert_usage_by_model(config)
    budget_cli.assert_usage_by_provider(config)


def test_budget_command_reads_the_same_database(config: Path) -> None:
    budget_cli.assert_budget_matches_usage(config)


def test_unreachable_database_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                schema: str) -> None:
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, f"postgresql://squirrel:{PASSWORD}@127.0.0.1:{closed_port()}/postgres")
    budget_cli.assert_unreachable_is_one_line(write_config(tmp_path, schema), "BudgetStoreUnavailable",
                                              PASSWORD)


def test_ledger_prune_removes_rows_and_keeps_budgets(config: Path) -> None:
    budget_cli.assert_prune_keeps_budgets(config)
