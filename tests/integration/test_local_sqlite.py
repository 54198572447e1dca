"""core + llama-local + sqlite-budget through ModelManager with the embedded default
configuration: real routing to the local model, price 0 honoured by the durable budget,
ledger rows written, and the ``squirrel ask`` / ``squirrel usage`` commands."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli
from squirrel_models.defaults import default_config
from squirrel_models.manager import ModelManager
from squirrel_models.plugins import PluginManager
from squirrel_models.types import AIRequest

pytestmark = pytest.mark.anyio

MODEL = "local/SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SQUIRREL_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SQUIRREL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./squirrel.toml
    return tmp_path


async def test_default_config_routes_and_accounts(data_dir: Path) -> None:
    pm = PluginManager()
    cfg = default_config(pm)
    assert cfg["budget"]["backend"] == "sqlite"
    async with ModelManager(cfg, plugins=pm) as mm:
        assert list(mm.models) == [MODEL]
        req = AIRequest.from_prompt("Name a fruit.", max_tokens=8)
        resp = await mm.complete(req)
        assert resp.model == MODEL and resp.cost == Decimal(0)
        assert resp.usage.source == "counted" and resp.usage.input_tokens > 0
        async with mm.stream(req) as s:
            async for _ in s:
                pass
        assert s.response is not None and s.response.cost == 0
        (u,) = await mm.tokens.check_budget(mm.models[MODEL])
        assert (u.committed, u.reserved, u.limit) == (0, 0, Decimal("5.00"))
        rows = await mm.budget_backend.rows()  # type: ignore[attr-defined]
    assert len(rows) == 2
    assert {r.model for r in rows} == {MODEL}
    assert all(r.outcome == "ok" and r.cost == 0 and r.usage_source == "counted" for r in rows)
    assert rows[0].input_tokens == resp.usage.input_tokens
    assert (data_dir / "budget.sqlite3").exists()


def test_cli_ask_and_usage(data_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["ask", "Say hi.", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert MODEL in result.output and "(counted)" in result.output and "$0" in result.output
    result = runner.invoke(cli, ["ask", "Say hi.", "--max-tokens", "8", "--json", "--no-stream"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["usage", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert MODEL in result.output
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 0 and MODEL in result.output and "$0 / $0" in result.output
