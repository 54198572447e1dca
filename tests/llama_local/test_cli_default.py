"""The command line with no configuration file: the embedded default serves the local model
(this session installs llama-local without sqlite-budget, so budgets are in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli


def test_usage_under_the_embedded_default_says_how_to_keep_it(
        smol_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The note told a user with no squirrel.toml to set [budget] options "next to the
    configuration file": there is none, and installing sqlite-budget is all it takes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SQUIRREL_CONFIG", raising=False)
    monkeypatch.setenv("SQUIRREL_MODELS_CACHE", str(smol_path.parent))
    monkeypatch.setenv("SQUIRREL_DATA_DIR", str(tmp_path / "data"))
    r = CliRunner().invoke(cli, ["usage"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "install squirrel-models-sqlite-budget: the embedded default" in r.stderr
    assert str(tmp_path / "data" / "budget.sqlite3") in r.stderr
    assert "configuration file" not in r.stderr
