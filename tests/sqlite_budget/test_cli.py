"""``squirrel usage`` and ``squirrel budget`` (the core CLI) over the SQLite ledger."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli

from tests.support import budget_cli
from tests.support.budget_cli import run
from tests.support.store_locks import SqliteLocker


def write_config(tmp_path: Path, *, provider: bool = True) -> Path:
    db = tmp_path / "budget.sqlite3"
    return budget_cli.write_config(tmp_path, "sqlite", f'{{ path = "{db}" }}', provider=provider)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    budget_cli.use_scripted(monkeypatch)
    path = write_config(tmp_path)
    budget_cli.fill_ledger(path)
    return path


def test_usage_by_model_as_json(config: Path) -> None:
    budget_cli.assert_usage_by_model(config)


def test_usage_by_provider_scope_and_day_as_table_and_csv(config: Path) -> None:
    table = run("usage", "--config", str(config), "--by", "provider")
    assert table.splitlines()[0].split()[:3] == ["group", "requests", "attempts"]
    assert table.splitlines()[1].split()[:3] == ["p", "3", "5"]
    scope = list(csv.DictReader(io.StringIO(run("usage", "--config", str(config), "--by", "scope",
                                                "--format", "csv"))))
    assert [(r["group"], r["requests"], r["attempts"]) for r in scope] == [("global", "3", "5")]
    day = list(csv.DictReader(io.StringIO(run("usage", "--config", str(config), "--by", "day",
                                              "--format", "csv"))))
    assert len(day) == 1 and day[0]["errors"] == "2"


def test_budget_command_reads_the_same_file(config: Path) -> None:
    (state,) = json.loads(run("budget", "--config", str(config), "--json"))
    assert state["scope"] == "global" and float(state["committed"]) > 0
    assert state["reserved"] == "0"


def test_the_memory_backends_note_says_what_to_write_and_that_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``squirrel usage`` on the ``memory`` backend tells the user what to set in ``[budget]``
    to keep usage; written as it says, the next requests are in the ledger, in a file next to
    the configuration (it said ``backend = "sqlite"`` alone, which fails: ``path`` is
    required)."""
    budget_cli.use_scripted(monkeypatch)
    config = budget_cli.write_config(tmp_path, "memory", "{}")
    note = CliRunner().invoke(cli, ["usage", "--config", str(config)]).stderr
    advice = re.search(r'in \[budget\]: (backend = "sqlite") and (options = \{[^}]*\})', note)
    assert advice is not None, note
    # the plugin is installed: "install squirrel-models-sqlite-budget" sent people to pip for nothing
    assert "install" not in note and "to keep usage across runs, set in [budget]" in note, note
    text = config.read_text().replace('backend = "memory"\noptions = {}', "\n".join(advice.groups()))
    config.write_text(text)
    budget_cli.fill_ledger(config)
    budget_cli.assert_usage_by_model(config)
    assert list(tmp_path.glob("*.sqlite3"))


def test_usage_in_a_real_subprocess(tmp_path: Path) -> None:
    """The installed ``squirrel`` command finds the plugin through its entry point."""
    config = write_config(tmp_path, provider=False)
    code = "from squirrel_models.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "usage", "--config", str(config), "--format",
                          "json"], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
    assert (tmp_path / "budget.sqlite3").exists()


def test_unusable_file_is_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, provider=False)
    (tmp_path / "budget.sqlite3").write_bytes(b"not a database at all" * 100)
    result = CliRunner().invoke(cli, ["usage", "--config", str(config)])
    assert result.exit_code == 1 or result.exit_code == 2
    assert "UnusableDatabase" in result.output and "budget.sqlite3" in result.output


def test_ledger_prune_removes_rows_and_keeps_budgets(config: Path) -> None:
    budget_cli.assert_prune_keeps_budgets(config)


@pytest.mark.parametrize("command", ["usage", "ask", "budget"])
def test_the_cli_on_a_locked_file_ends_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   command: str) -> None:
    """Another process holds the file under ``BEGIN EXCLUSIVE``: a command that must write
    (``ask`` reserves; ``usage`` and ``budget`` may reconcile expired leases first) waits
    ``busy_timeout_s`` and says so in one line; one that only reads may answer."""
    budget_cli.use_scripted(monkeypatch)
    db = tmp_path / "budget.sqlite3"
    config = budget_cli.write_config(tmp_path, "sqlite", f'{{ path = "{db}", busy_timeout_s = 1 }}')
    budget_cli.fill_ledger(config)
    with SqliteLocker(str(db)) as locker:
        anyio.run(locker.lock)
        budget_cli.hung_store_outputs(config, command)
