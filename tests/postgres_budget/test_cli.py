"""``squirrel usage`` and ``squirrel budget`` (the core CLI) over the PostgreSQL ledger, and one
request through ModelManager end to end."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from squirrel_models import AIRequest, ServerError
from squirrel_models.cli import cli
from squirrel_models.manager import ModelManager
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import Fail, ScriptedPlugin
from squirrel_models_postgres_budget import PostgresBudgetBackend

from .pgserver import PASSWORD, PgServer, free_port

ENV = "SQUIRREL_TEST_PG_URL"


class WithScripted(PluginManager):
    """The CLI's plugin manager plus the scripted test provider."""

    def load(self) -> None:
        if not self._loaded:
            super().load()
            self._register(ScriptedPlugin(), "scripted", "manual")


def write_config(tmp_path: Path, schema: str) -> Path:
    path = tmp_path / "squirrel.toml"
    path.write_text(f"""
[[providers]]
name = "p"
type = "scripted"
options = {{ models = ["a", "b"] }}
models = [{{ name = "a", price = {{ input = "0.1", output = "0.1" }} }},
          {{ name = "b", price = {{ input = "1", output = "2" }} }}]

[budget]
backend = "postgres"
options = {{ url_env = "{ENV}", schema = "{schema}", connect_timeout_s = 1 }}
limits = [{{ scope = "global", period = "day", limit = "5" }}]

[fallback.options.retry]
base_delay = 0.001
""")
    return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PgServer, schema: str) -> Path:
    monkeypatch.setattr("squirrel_models.plugins.PluginManager", WithScripted)
    monkeypatch.setenv(ENV, pg_server.url)
    path = write_config(tmp_path, schema)

    async def fill() -> None:
        async with ModelManager.from_toml(path, plugins=WithScripted()) as mm:
            assert isinstance(mm.budget_backend, PostgresBudgetBackend)
            p = mm._providers["p"]
            p.script("a", Fail(ServerError("boom", status_code=500)),
                     Fail(ServerError("boom", status_code=500)))
            for _ in range(3):
                await mm.complete(AIRequest.from_prompt("hello there", max_tokens=10))
            assert (await mm.budget_backend.audit())["open"] == 0

    anyio.run(fill)
    return path


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_usage_by_model_as_json(config: Path) -> None:
    rows = {r["group"]: r for r in json.loads(run("usage", "--config", str(config), "--format", "json"))}
    a, b = rows["p/a"], rows["p/b"]
    assert (a["requests"], a["attempts"], a["errors"], a["fallbacks"]) == (1, 2, 2, 1)
    assert (b["requests"], b["attempts"], b["errors"], b["fallbacks"]) == (3, 3, 0, 1)
    assert Decimal(b["cost_usd"]) == 3 * Decimal(b["cost_per_request"]) > 0
    table = run("usage", "--config", str(config), "--by", "provider")
    assert table.splitlines()[1].split()[:3] == ["p", "3", "5"]


def test_budget_command_reads_the_same_database(config: Path) -> None:
    (state,) = json.loads(run("budget", "--config", str(config), "--json"))
    assert state["scope"] == "global" and Decimal(state["committed"]) > 0
    assert Decimal(state["reserved"]) == 0
    usage = json.loads(run("usage", "--config", str(config), "--format", "json"))
    assert Decimal(state["committed"]) == sum(Decimal(r["cost_usd"]) for r in usage)


def test_unreachable_database_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                schema: str) -> None:
    monkeypatch.setattr("squirrel_models.plugins.PluginManager", WithScripted)
    monkeypatch.setenv(ENV, f"postgresql://squirrel:{PASSWORD}@127.0.0.1:{free_port()}/postgres")
    result = CliRunner().invoke(cli, ["budget", "--config", str(write_config(tmp_path, schema))])
    assert result.exit_code == 1
    assert "BudgetStoreUnavailable" in result.output
    assert PASSWORD not in result.output
