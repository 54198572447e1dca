"""The core CLI (``squirrel usage``, ``squirrel budget``, ``squirrel ledger prune``) over a
durable budget backend's ledger: the configuration, the ledger filled through ModelManager, and
the checks that the SQLite, PostgreSQL and Redis test suites share. Imports core alone."""

from __future__ import annotations

import json
import re
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

from . import secret_scanner

PROVIDER_TOML = """
[[providers]]
name = "p"
type = "scripted"
options = { models = ["a", "b"] }
models = [{ name = "a", price = { input = "0.1", output = "0.1" } },
          { name = "b", price = { input = "1", output = "2" } }]
"""


class WithScripted(PluginManager):
    """The CLI's plugin manager plus the scripted test provider."""

    def load(self) -> None:
        if not self._loaded:
            super().load()
            self._register(ScriptedPlugin(), "scripted", "manual")


def use_scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI's plugin manager :class:`WithScripted` for this test."""
    monkeypatch.setattr("squirrel_models.plugins.PluginManager", WithScripted)


def write_config(tmp_path: Path, backend: str, options: str, *, provider: bool = True) -> Path:
    """``tmp_path/squirrel.toml``: the budget on ``backend`` with ``options`` (a TOML inline
    table) and a global daily limit of 5; with ``provider``, the scripted provider ``p`` with a
    cheap model ``a`` and a dearer ``b``."""
    text = f"""
[budget]
backend = "{backend}"
options = {options}
limits = [{{ scope = "global", period = "day", limit = "5" }}]

[fallback]
strategies = ["retry", "next_candidate"]  # a failing model is retried once (see below)

[fallback.options.retry]
base_delay = 0.001
"""
    path = tmp_path / "squirrel.toml"
    path.write_text(PROVIDER_TOML + text if provider else text)
    return path


async def send_three_requests(mm: ModelManager) -> None:
    """Fill the ledger that :func:`assert_usage_by_model` expects: request 1 finds ``a``
    failing twice (retried), then ``b`` answers; the failures steer requests 2 and 3 to ``b``."""
    p = mm._providers["p"]
    p.script("a", Fail(ServerError("boom", status_code=500)),
             Fail(ServerError("boom", status_code=500)))
    for _ in range(3):
        await mm.complete(AIRequest.from_prompt("hello there", max_tokens=10))


def fill_ledger(config: Path, backend_type: type | None = None) -> None:
    """:func:`send_three_requests` through a ModelManager on ``config``; with ``backend_type``,
    check that the budget backend is one and holds no open lease afterwards (its ``audit()``)."""

    async def fill() -> None:
        async with ModelManager.from_toml(config, plugins=WithScripted()) as mm:
            if backend_type is not None:
                assert isinstance(mm.budget_backend, backend_type)
            await send_three_requests(mm)
            if backend_type is not None:
                assert (await mm.budget_backend.audit())["open"] == 0

    anyio.run(fill)


def run(*args: str) -> Any:
    """The output of ``squirrel *args``, which must succeed."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def assert_usage_by_model(config: Path) -> None:
    """``squirrel usage --format json`` after :func:`send_three_requests`."""
    rows = {r["group"]: r for r in json.loads(run("usage", "--config", str(config), "--format", "json"))}
    a, b = rows["p/a"], rows["p/b"]
    assert (a["requests"], a["attempts"], a["errors"], a["fallbacks"]) == (1, 2, 2, 1)
    assert (b["requests"], b["attempts"], b["errors"], b["fallbacks"]) == (3, 3, 0, 1)
    assert Decimal(b["cost_usd"]) == 3 * Decimal(b["cost_per_request"]) > 0


def assert_usage_by_provider(config: Path) -> None:
    """``squirrel usage --by provider`` (a table) after :func:`send_three_requests`."""
    table = run("usage", "--config", str(config), "--by", "provider")
    assert table.splitlines()[1].split()[:3] == ["p", "3", "5"]


def assert_budget_matches_usage(config: Path) -> None:
    """``squirrel budget`` after :func:`send_three_requests`: committed spend, nothing reserved,
    and the committed spend is the ledger's cost."""
    (state,) = json.loads(run("budget", "--config", str(config), "--json"))
    assert state["scope"] == "global" and Decimal(state["committed"]) > 0
    assert Decimal(state["reserved"]) == 0
    usage = json.loads(run("usage", "--config", str(config), "--format", "json"))
    assert Decimal(state["committed"]) == sum(Decimal(r["cost_usd"]) for r in usage)


def assert_unreachable_is_one_line(config: Path, error: str, password: str) -> None:
    """``squirrel budget`` on a backend whose server does not answer: exit code 1 and a line
    naming the ``error`` type, without the server's ``password``."""
    result = CliRunner().invoke(cli, ["budget", "--config", str(config)])
    assert result.exit_code == 1
    assert error in result.output
    assert password not in result.output


def failing_budget_outputs(config: Path) -> list[str]:
    """``squirrel budget -vv`` (DEBUG logs on standard error) on ``config``, whose store
    refuses, in process and in a real process: each exits 1 without a traceback. Returns
    what they printed (for the secret scanner)."""
    import os
    import subprocess
    import sys

    result = CliRunner().invoke(cli, ["budget", "-vv", "--config", str(config)])
    assert result.exit_code == 1, result.output
    proc = subprocess.run([sys.executable, "-c", "from squirrel_models.cli import main; main()",
                           "budget", "-vv", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return [result.output, proc.stdout, proc.stderr]


#: ``python -c`` running the CLI with the scripted provider (:class:`WithScripted`).
_SCRIPTED_CLI = ("import squirrel_models.plugins as p; from tests.support.budget_cli import WithScripted; "
                 "p.PluginManager = WithScripted; from squirrel_models.cli import main; main()")
#: The longest a command on a hung store may take before it counts as hung itself: far past
#: the store's own timeouts the tests configure (a few seconds), and the interpreter's start.
HANG_S = 60.0


def hung_store_outputs(config: Path, command: str) -> list[str]:
    """``squirrel COMMAND`` (``usage``, ``budget``, or ``ask`` a prompt of the scripted
    provider) on ``config``, whose store hangs or is held locked, in a real process: it ends
    (no hang: the process, its threads and its exit), exits 1 with one line naming the
    error on standard error and no traceback. Returns what it printed (for the scanner)."""
    import os
    import subprocess
    import sys

    args = {"ask": ["ask", "--no-stream", "hello there"], "usage": ["usage"],
            "budget": ["budget"]}[command]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get(
        "PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _SCRIPTED_CLI, *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=HANG_S, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    # the store's typed error: a timeout (it hangs) or unavailable (it cannot be reached)
    assert re.match(r"Error: \w*(Timeout|Unavailable)\w*: ", lines[0]), lines
    secret_scanner.collect(proc.stdout, proc.stderr)
    return [proc.stdout, proc.stderr]


def assert_prune_keeps_budgets(config: Path) -> None:
    """``squirrel ledger prune`` after :func:`send_three_requests`: nothing before yesterday,
    then every row (before tomorrow), and ``squirrel budget`` shows the same committed spend
    before and after: pruning removes ledger rows, never spend."""
    from datetime import UTC, datetime, timedelta

    cfg = ["--config", str(config)]
    budget = json.loads(run("budget", *cfg, "--json"))
    assert Decimal(budget[0]["committed"]) > 0
    day = datetime.now(UTC).date()
    yesterday, tomorrow = str(day - timedelta(days=1)), str(day + timedelta(days=1))
    attempts = sum(r["attempts"] for r in json.loads(run("usage", *cfg, "--format", "json")))
    assert run("ledger", "prune", *cfg, "--before", yesterday, "--yes") == (
        f"pruned 0 ledger row(s) recorded before {yesterday} (UTC)\n")
    out = run("ledger", "prune", *cfg, "--before", tomorrow, "--yes")
    pruned = int(out.split()[1])
    assert pruned >= attempts == 5 and out.endswith(f"recorded before {tomorrow} (UTC)\n")
    assert json.loads(run("usage", *cfg, "--format", "json")) == []
    assert json.loads(run("budget", *cfg, "--json")) == budget
