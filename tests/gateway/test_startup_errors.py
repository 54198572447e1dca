"""``squirrel serve`` whose start-up fails with a typed error says so in one line, as every
other command does: uvicorn logged the traceback of the app's start-up first (some 40
lines of frames ending in the same message), for a configuration mistake and for a budget
store that stayed locked past its timeout alike."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio

from ..support.store_locks import SqliteLocker

_PROVIDER = ('timeout = 2.0\n'
             '[[providers]]\nname = "up"\ntype = "openai"\ndiscover = false\n'
             'options = { base_url = "http://127.0.0.1:9/v1" }\n'
             'models = [{ name = "m", price = { input = "1", output = "1" } }]\n')


def _serve(config: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    squirrel = Path(sys.executable).parent / "squirrel"
    t0 = time.monotonic()
    out = subprocess.run([str(squirrel), "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=180)
    return out, time.monotonic() - t0


def _one_error_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], stderr


def test_an_alias_naming_no_model_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "squirrel.toml"
    config.write_text(_PROVIDER + '[gateway]\nallow_anonymous = true\nport = 0\n'
                      'aliases = { small = "up/nope" }\n')
    out, _ = _serve(config)
    assert out.returncode == 2, out
    _one_error_line(out.stderr, "ConfigError: gateway.aliases.small")


def test_a_budget_store_locked_at_start_up_is_one_line_within_its_timeout(tmp_path: Path) -> None:
    """Another process holds the SQLite file under ``BEGIN EXCLUSIVE`` all along: start-up
    (its reconciliation) gives up after the backend's ``busy_timeout_s`` with one line naming
    the store's timeout, exit 1, and nothing listens."""
    path = tmp_path / "budget.sqlite3"
    config = tmp_path / "squirrel.toml"
    config.write_text(_PROVIDER + '[budget]\nbackend = "sqlite"\n'
                      f'options = {{ path = "{path}", busy_timeout_s = 1.0 }}\n'
                      '[gateway]\nallow_anonymous = true\nport = 0\n')
    with SqliteLocker(str(path)) as locker:
        anyio.run(locker.lock)
        out, took = _serve(config)
    assert out.returncode == 1, out
    _one_error_line(out.stderr, "BudgetStoreTimeout")
    assert "busy_timeout_s" in out.stderr or "own timeout" in out.stderr, out.stderr
    assert took < 120  # bounded by the 1 s timeout (plus the start of a process under load)
    assert "squirrel serve: http" not in out.stderr


def test_an_error_that_is_a_bug_keeps_its_traceback() -> None:
    """The filter drops only the traceback of the start-up's own typed error."""
    import logging

    from squirrel_models.errors import ConfigError
    from squirrel_models_gateway.server import _StartupErrorRaisedInstead

    class Gw:
        startup_error: BaseException | None = None

    gw = Gw()
    quiet = _StartupErrorRaisedInstead(gw)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, text, None, None)

    bug = "Traceback (most recent call last):\n  ...\nKeyError: 'x'"
    assert quiet.filter(record(bug))  # no typed error recorded: kept
    gw.startup_error = ConfigError("no model named 'up/nope'", field="gateway.aliases.small")
    typed = f"Traceback (most recent call last):\n  ...\nConfigError: {gw.startup_error}"
    assert not quiet.filter(record(typed))
    assert quiet.filter(record(bug))  # another failure's traceback: kept
    assert quiet.filter(record("Application startup failed. Exiting."))
