"""The ``squirrel`` command line, through click's runner, with the scripted test provider
installed as a real entry point."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli
from squirrel_models.ledger import summary_row

from .dists import SCRIPTED_DIST, install, make_dist

CONFIG = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["cheap", "dear", "mystery"], reply = "squirrels hide nuts" }
[[providers.models]]
name = "cheap"
price = { input = "0.1", output = "0.2" }
quality = 0.6
[[providers.models]]
name = "dear"
price = { input = "30", output = "60" }
quality = 0.9

[budget]
allow_unpriced = false
[[budget.limits]]
scope = "global"
period = "day"
limit = "1.00"
"""


@pytest.fixture
def run(tmp_path, monkeypatch):
    install(monkeypatch, make_dist(tmp_path / "dist", "sq-scripted", entry_points=SCRIPTED_DIST))
    cfg = tmp_path / "squirrel.toml"
    cfg.write_text(CONFIG)
    monkeypatch.delenv("SQUIRREL_CONFIG", raising=False)

    def invoke(*args: str, config: str | None = str(cfg)):
        extra = ["--config", config] if config and args[0] not in ("plugins",) else []
        result = CliRunner().invoke(cli, [*args, *extra], catch_exceptions=False)
        return result

    return invoke


def test_plugins_lists_sources(run) -> None:
    r = run("plugins", "--json")
    data = json.loads(r.output)
    names = {p["name"]: p for p in data["plugins"]}
    assert names["scripted"]["source"] == "entrypoint"
    assert "scripted" in data["provides"]["providers"]
    assert data["failures"] == []


def test_models_shows_unknown_prices_as_unknown(run) -> None:
    r = run("models")
    assert r.exit_code == 0
    line = next(x for x in r.output.splitlines() if x.startswith("local/mystery"))
    assert "unknown" in line
    data = json.loads(run("models", "--json").output)
    prices = {m["id"]: m["price_per_mtok"] for m in data}
    assert prices["local/mystery"] is None
    assert prices["local/cheap"] == {"input": "0.1", "output": "0.2", "cached_input": None}


def test_models_of_a_configuration_without_providers_says_why_it_is_empty(run, tmp_path) -> None:
    """An empty squirrel.toml (or one whose [[providers]] is misspelled away) printed a table
    header alone, exit 0, as if the install were broken."""
    empty = tmp_path / "empty.toml"
    empty.write_text("timeout = 30\n")
    r = run("models", config=str(empty))
    assert r.exit_code == 0
    assert r.stdout.startswith("model ") and len(r.stdout.splitlines()) == 1
    assert "note: no model is registered: the configuration has no [[providers]] entry" in r.stderr
    assert json.loads(run("models", "--json", config=str(empty)).stdout) == []
    assert run("-q", "models", config=str(empty)).stderr == ""
    assert run("models").stderr == ""


def test_log_lines_from_worker_threads_obey_q_and_v(run, monkeypatch) -> None:
    """A plugin logs from worker threads (llama-local loads its models in one): -q still
    printed their warnings and -v never showed their info lines, since the level was read from
    click's context, which a worker thread does not have."""
    from squirrel_models import defaults

    real = defaults.find_config

    def find_config(explicit):
        log = logging.getLogger("squirrel_models.test_thread")
        worker = threading.Thread(target=lambda: (log.warning("thread warning"), log.info("thread info")))
        worker.start()
        worker.join()
        return real(explicit)

    monkeypatch.setattr(defaults, "find_config", find_config)
    plain, quiet, verbose = run("models").stderr, run("-q", "models").stderr, run("-v", "models").stderr
    assert "warning: thread warning" in plain and "thread info" not in plain
    assert quiet == ""
    assert "warning: thread warning" in verbose and "info: thread info" in verbose


def test_select_explain(run) -> None:
    r = run("select", "--explain", "--max-cost-per-1k", "0.001")
    assert r.exit_code == 0
    assert r.output.startswith("local/cheap: score ")
    assert "excluded:" in r.output
    assert "local/mystery: price unknown, cannot meet max_cost_per_1k_tokens" in r.output
    data = json.loads(run("select", "--json").output)
    assert data["candidates"][0]["model"] == "local/cheap"
    assert set(data["candidates"][0]["scores"]) >= {"cost", "latency", "quality", "context", "reliability"}


def test_select_explain_names_a_rate_limit_no_request_of_this_size_fits(run, tmp_path) -> None:
    """Before: ``select --explain`` ranked local/cheap first although its tpm limit could
    never admit the request (the attempt then failed with RateLimitTooSmall), and a caller
    key's 0 was not shown at all."""
    cfg = tmp_path / "limited.toml"
    cfg.write_text(CONFIG + """
[rate_limits]
limits = [{ scope = "model:local/cheap", tpm = 2000 }, { scope = "key:batch", rpm = 0 }]
""")
    r = run("select", "--explain", "--prompt", "Where are the nuts?", "--max-tokens", "4000",
            config=str(cfg))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("local/dear: score ")
    assert ("local/cheap: tpm limit 2,000 on model:local/cheap is below the 4,006 tokens this "
            "attempt needs at worst (its prompt plus the output cap)") in r.output
    r = run("select", "--explain", "--prompt", "Where are the nuts?", "--max-tokens", "100",
            config=str(cfg))
    assert r.output.startswith("local/cheap: score "), r.output  # a smaller request fits
    r = run("select", "--prompt", "Where?", "--key", "batch", config=str(cfg))
    assert r.exit_code == 3
    assert "local/cheap: rpm limit 0 on key:batch is below the 1 request(s)" in r.output
    r = run("select", "--key", "batch", config=str(cfg))
    assert r.exit_code == 2 and "give --prompt too" in r.output


@pytest.mark.parametrize("prompt", ["", "  ", "\n"])
def test_select_refuses_an_empty_prompt(run, prompt: str) -> None:
    """Before: ``select --prompt ''`` ranked as if no --prompt were given (and with
    ``--max-tokens``, said to give --prompt, which was given)."""
    for extra in ([], ["--max-tokens", "100"]):
        r = run("select", "--prompt", prompt, *extra)
        assert r.exit_code == 2, r.output
        assert "--prompt is empty" in r.output


def test_select_explain_and_ask_name_every_models_reason_when_none_is_left(run, tmp_path) -> None:
    """One model left out by its window, one by the price ceiling, one by a tpm limit:
    ``select --explain`` lists the three reasons, and ``ask`` fails with RateLimitTooSmall whose
    message names each (before: the rate-limited model's alone)."""
    cfg = tmp_path / "none.toml"
    cfg.write_text("""
[[providers]]
name = "local"
type = "scripted"
options = { models = ["small", "dear", "cheap"], reply = "squirrels hide nuts" }
[[providers.models]]
name = "small"
price = { input = "0.1", output = "0.2" }
context_window = 2048
[[providers.models]]
name = "dear"
price = { input = "30", output = "60" }
[[providers.models]]
name = "cheap"
price = { input = "0.1", output = "0.2" }

[requirements]
min_context_window = 4096
max_cost_per_1k_tokens = "0.01"

[rate_limits]
limits = [{ scope = "model:local/cheap", tpm = 50 }]
""")
    reasons = ["local/small: context window 2048 < 4096",
               "local/dear: costs $", "local/cheap: tpm limit 50 on model:local/cheap is below"]
    r = run("select", "--explain", "--prompt", "Where are the nuts?", "--max-tokens", "100",
            config=str(cfg))
    assert r.exit_code == 3, r.output
    for reason in reasons:
        assert reason in r.output, r.output
    r = run("ask", "Where are the nuts?", "--max-tokens", "100", "--no-stream", config=str(cfg))
    assert r.exit_code != 0
    assert ("RateLimitTooSmall: tpm limit 50 on model:local/cheap is below the 106 tokens"
            in r.output), r.output
    for reason in reasons[:2]:
        assert reason in r.output, r.output


def test_ask_prints_answer_cost_and_budget(run) -> None:
    r = run("ask", "Where are the nuts?", "--max-tokens", "16")
    assert r.exit_code == 0, r.output
    assert "squirrels hide nuts" in r.output
    assert "local/cheap" in r.output
    assert "budget global (" in r.output
    data = json.loads(run("ask", "Where?", "--json", "--no-stream").output)
    assert data["model"] == "local/cheap"
    assert data["usage"]["source"] == "reported"
    assert data["budget"][0]["scope"] == "global"


def test_ask_refused_by_ceiling_exits_1(run) -> None:
    r = run("ask", "hi", "--max-tokens", "1000", "--max-cost", "0.0000001", "--provider", "local",
            "--no-stream")
    assert r.exit_code == 1
    assert "CostCeilingExceeded" in r.output or "ceiling" in r.output


def test_budget_and_usage(run) -> None:
    run("ask", "one", "--no-stream")
    r = run("budget", "--json")
    (state,) = json.loads(r.output)
    assert state["scope"] == "global" and state["limit"] == "1.00"
    r = run("usage", "--format", "json")
    # the in-memory ledger lives in the process: a new CLI process starts with none
    assert r.exit_code == 0


def test_bad_config_is_one_clear_line(run, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("timeout = -3\n")
    r = run("models", config=str(bad))
    assert r.exit_code != 0
    assert "ConfigError: timeout: must be a finite number > 0" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize(("toml", "line"), [
    ('[budget]\nbackend = "memory"\npassword = "hunter2"\n', "ConfigError: budget.password: unknown key"),
    ('[budget]\nbackend = "memory"\n[budget.options]\npassword = "x"\n',
     "ConfigError: budget.options.password: unknown key"),
    ('token = "hunter2"\n', "ConfigError: token: unknown key"),
    ('DB_PASSWORD = "hunter2"\n', "ConfigError: DB_PASSWORD: unknown key"),
])
def test_a_field_named_like_a_credential_is_named_in_a_readable_error(run, tmp_path, toml: str, line: str) -> None:
    """Once ``password`` named a credential for redaction, the message after the field's
    path was masked as its value (``budget.password: *** key``): a dotted path's ``:`` is
    ours, no assignment; the value itself is never quoted."""
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    r = run("models", config=str(bad))
    assert r.exit_code != 0
    assert line in r.output, r.output
    assert "***" not in r.output and "hunter2" not in r.output


def test_a_config_nested_too_deeply_is_one_config_error_line(run, tmp_path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    r = run("models", config=str(deep))
    assert r.exit_code == 2
    assert "Error: ConfigError: " in r.output and "nested too deeply" in r.output
    assert "internal error" not in r.output and "Traceback" not in r.output


def test_a_configuration_path_that_is_no_file_says_what_it_is_and_where_it_came_from(
        run, tmp_path, monkeypatch) -> None:
    r = run("models", config=str(tmp_path))
    assert r.exit_code == 2
    assert f"configuration file {tmp_path} (--config) is a folder, not a file" in r.output
    r = run("models", config=os.devnull)  # a device: read as a file, /dev/zero never ends
    assert r.exit_code == 2
    assert f"configuration file {os.devnull} (--config) is not a regular file" in r.output
    monkeypatch.setenv("SQUIRREL_CONFIG", str(tmp_path / "gone.toml"))
    r = run("models", config=None)
    assert r.exit_code == 2
    assert f"configuration file {tmp_path / 'gone.toml'} ($SQUIRREL_CONFIG) does not exist" in r.output
    # ./squirrel.toml as a folder is not skipped for the embedded default
    monkeypatch.delenv("SQUIRREL_CONFIG")
    (tmp_path / "here" / "squirrel.toml").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    r = run("models", config=None)
    assert r.exit_code == 2
    assert "configuration file squirrel.toml (the current folder's) is a folder, not a file" in r.output


@pytest.mark.parametrize(("name", "says"), [
    ("a" * 5000, "cannot be opened: File name too long"),  # was an OSError: "internal error"
    ("loop", "cannot be opened: Too many levels of symbolic links"),
    ("file.toml/squirrel.toml", "cannot be opened: Not a directory"),
    ("two\nlines.toml", "'two\\nlines.toml' (--config) does not exist"),  # one line, escaped
])
def test_a_configuration_path_the_system_cannot_look_up_is_one_config_error_line(run, tmp_path, monkeypatch,
                                                                                  name, says) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file.toml").write_text("")
    r = run("models", config=name)
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("Error: ConfigError: configuration file ") and says in line, line
    assert len(line) < 400


def test_budget_says_which_limits_a_request_without_a_key_escapes(run, tmp_path) -> None:
    """A key:* limit alone: a request without a key is not capped, and ``squirrel budget``
    said "no budget limits configured" with the limit in the file."""
    cfg = tmp_path / "keys.toml"
    cfg.write_text(CONFIG.split("[budget]")[0] + '[budget]\nlimits = [{ scope = "key:*", '
                   'limit = "1" }]\n')
    r = run("budget", config=str(cfg))
    assert r.exit_code == 0
    assert r.stdout == "no limit applies to a request without a budget key\n"
    assert "note: key:* limits each budget key separately and applies only to" in r.stderr
    r = run("budget", "--key", "vip", config=str(cfg))
    assert r.stdout.startswith("key:vip ") and r.stderr == ""
    # beside a global limit: the global one is shown, key:* named on standard error
    r = run("budget")
    assert r.stdout.startswith("global ") and r.stderr == ""
    cfg.write_text(CONFIG + '[[budget.limits]]\nscope = "key:*"\nlimit = "1"\n')
    r = run("budget", config=str(cfg))
    assert r.stdout.startswith("global ") and "note: key:* limits each" in r.stderr
    assert run("-q", "budget", config=str(cfg)).stderr == ""


@pytest.mark.parametrize("key", ["", "team\nb", "a\x00b", "k" * 257])
@pytest.mark.parametrize("command", [["budget"], ["ask", "hi", "-m", "local/cheap"]])
def test_a_key_no_request_can_carry_is_refused_naming_key(run, tmp_path, key: str, command: list[str]) -> None:
    """``squirrel budget --key`` listed ``key:`` (the empty key), split its line at a line
    break, and gave a NUL to the store; ``ask`` refused them only as the request was built."""
    cfg = tmp_path / "keys.toml"
    cfg.write_text(CONFIG.split("[budget]")[0] + '[budget]\nlimits = [{ scope = "key:*", limit = "1" }]\n')
    r = run(*command, "--key", key, config=str(cfg))
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--key': the budget key must be" in r.output and "key:" not in r.stdout


def test_an_unknown_provider_flag_is_refused_naming_it(run) -> None:
    """``--provider nope`` excluded every model ("provider local not allowed", exit 3) where
    ``-m nope`` says the model does not exist (exit 2)."""
    for command in (["select"], ["ask", "hi"]):
        r = run(*command, "--provider", "nope")
        assert r.exit_code == 2, r.output
        assert "Invalid value for '--provider': no provider 'nope' is configured; configured: local" in r.output
    assert run("select", "--provider", "local").exit_code == 0


@pytest.mark.parametrize("option", ["--tag", "--capability", "--feature", "--provider", "-m"])
@pytest.mark.parametrize("value", ["a\nb", "x" * 100_000], ids=["line-break", "100k"])
def test_a_hostile_requirement_name_is_one_bounded_error_line(run, option: str, value: str) -> None:
    """A name no model answers to was quoted whole: a line break split the error (or the
    exclusion line of --explain), 100,000 characters came back whole."""
    for command in (["select", "--explain"], ["ask", "hi"]):
        r = run(*command, option, value)
        assert r.exit_code == 2, r.output
        error = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and error[0] == r.output.splitlines()[-1], r.output
        assert len(r.output) < 1000, len(r.output)


def test_ask_says_when_no_configured_limit_applies(run, tmp_path) -> None:
    """A key:* limit alone: ``squirrel ask`` without --key spent with no budget line at all."""
    cfg = tmp_path / "keys.toml"
    cfg.write_text(CONFIG.split("[budget]")[0] + '[budget]\nlimits = [{ scope = "key:*", '
                   'limit = "1" }]\n')
    r = run("ask", "hi", "-m", "local/cheap", config=str(cfg))
    assert r.exit_code == 0
    assert "-- budget: no configured limit applies to this request (key: limits need --key KEY)" in r.stderr
    r = run("ask", "hi", "-m", "local/cheap", "--key", "bob", config=str(cfg))
    assert "-- budget key:bob (total): $" in r.stderr and "no configured limit" not in r.stderr
    assert "no configured limit" not in run("ask", "hi").stderr  # the global limit applies


def test_usage_asks_the_backend_to_summarize_when_it_can(run, monkeypatch) -> None:
    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
    from squirrel_models.ledger import render

    table = [summary_row("p/a", requests=1, attempts=2, errors=1, fallbacks=1, input_tokens=3,
                         output_tokens=4, cost=Decimal("0.5"), unpriced=0)]
    calls = []

    async def summarize(self, by, since=None, until=None):
        calls.append((by, since, until))
        return table

    monkeypatch.setattr(MemoryBudgetBackend, "summarize", summarize)
    r = run("usage", "--by", "scope", "--format", "csv")
    assert r.exit_code == 0, r.output
    assert r.stdout == render(table, "csv") + "\n"
    ((by, since, until),) = calls
    assert by == "scope" and isinstance(since, datetime) and until is None


def test_ledger_prune_reports_rows_removed_and_keeps_budgets(run) -> None:
    run("ask", "one", "--no-stream")
    before = json.loads(run("budget", "--json").output)
    r = run("ledger", "prune", "--before", "2100-01-01", "--yes")
    assert r.exit_code == 0, r.output
    # each CLI process starts with an empty in-memory ledger and spend
    assert r.output == "pruned 0 ledger row(s) recorded before 2100-01-01 (UTC)\n"
    assert json.loads(run("budget", "--json").output) == before


def test_ledger_prune_asks_first_and_checks_the_date(run, tmp_path) -> None:
    args = ["ledger", "prune", "--before", "2026-01-01", "--config", str(tmp_path / "squirrel.toml")]
    r = CliRunner().invoke(cli, args, input="n\n")
    assert r.exit_code == 1 and "Delete every ledger row recorded before 2026-01-01" in r.output
    assert "Aborted" in r.output and "pruned" not in r.output
    r = run("ledger", "prune", "--before", "01/02/2026", "--yes")
    assert r.exit_code == 2 and "'01/02/2026' is not a day written YYYY-MM-DD" in r.output


def test_ledger_prune_refuses_a_backend_that_cannot_prune(run, monkeypatch) -> None:
    import squirrel_models.cli as cli_module

    class NoPrune:  # a budget backend with a ledger but no retention
        async def rows(self, since=None, until=None):
            return []

        async def aclose(self) -> None:
            return None

    real = cli_module._manager

    def manager(config):
        mm = real(config)
        mm.budget_backend = NoPrune()
        return mm

    monkeypatch.setattr(cli_module, "_manager", manager)
    r = run("ledger", "prune", "--before", "2026-01-01", "--yes")
    assert r.exit_code == 1
    assert "Error: the 'memory' budget backend cannot prune its ledger" in r.output


def test_a_config_error_under_the_embedded_default_says_no_file_was_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting the embedded default lacks (the gateway's keys) read as a file's mistake;
    under the default the error now says no file was found and where one was looked for,
    and with a file it says nothing of the kind."""
    from squirrel_models.defaults import noting_the_default
    from squirrel_models.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info, noting_the_default(None):
        raise ConfigError("no virtual keys", field="gateway.keys")
    text = str(info.value)
    assert text.startswith("gateway.keys: no virtual keys (no configuration file was found")
    assert f"$SQUIRREL_CONFIG and {Path.cwd() / 'squirrel.toml'}" in text
    assert info.value.field == "gateway.keys"
    with pytest.raises(ConfigError) as info, noting_the_default(tmp_path / "squirrel.toml"):
        raise ConfigError("no virtual keys", field="gateway.keys")
    assert str(info.value) == "gateway.keys: no virtual keys"
