"""The installed ``squirrel`` command, run as a user runs it: a subprocess, with the scripted
test provider installed as a real distribution (entry point) on ``PYTHONPATH``.

Each test pins one behaviour docs/cli.md promises: exit codes, JSON errors, requirements from
the configuration, the answer with ``--no-stream``, fallbacks explained, option validation,
plugins that fail to load, and the command line people expect (``-m``, stdin, ``-v``/``-q``,
``--format``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .dists import SCRIPTED_DIST, make_dist

SQUIRREL = shutil.which("squirrel", path=os.path.dirname(sys.executable))

pytestmark = pytest.mark.skipif(SQUIRREL is None, reason="the squirrel command is not installed")

CONFIG = """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["cheap", "dear", "mystery", "vision"], reply = "squirrels hide nuts" }
[[providers.models]]
name = "cheap"
price = { input = "0.1", output = "0.2" }
quality = 0.6
[[providers.models]]
name = "dear"
price = { input = "30", output = "60" }
quality = 0.9
[[providers.models]]
name = "vision"
price = { input = "1", output = "2" }
capabilities = ["chat", "vision"]

[budget]
allow_unpriced = false
[[budget.limits]]
scope = "global"
period = "day"
limit = "1.00"
"""

BROKEN = {"broken": "sq_broken_plugin"}


class Squirrel:
    """Runs the installed command in ``cwd`` with the scripted provider installed."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.dists = [make_dist(tmp_path / "dist", "sq-scripted", entry_points=SCRIPTED_DIST)]
        self.config = tmp_path / "squirrel.toml"
        self.config.write_text(CONFIG)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SQUIRREL_") and k != "PYTHONPATH"}
        self.env["SQUIRREL_DATA_DIR"] = str(tmp_path / "data")

    def add_broken_plugin(self) -> None:
        self.dists.append(make_dist(self.cwd / "broken", "sq-broken", entry_points={
            "broken": "sq_broken_plugin"}, modules={"sq_broken_plugin": "import no_such_module_xyz\n"}))

    def __call__(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
                 config: bool = True, cwd: Path | None = None, stdout: int | None = None
                 ) -> subprocess.CompletedProcess[str]:
        assert SQUIRREL is not None
        full = dict(self.env, PYTHONPATH=os.pathsep.join(str(d) for d in self.dists),
                    **(env or {}))
        argv = [SQUIRREL, *args]
        if config and args and args[0] not in ("plugins", "--help", "--version"):
            argv += ["--config", str(self.config)]
        return subprocess.run(argv, cwd=cwd or self.cwd, env=full, input=stdin if stdin is not None
                              else "", stdout=subprocess.PIPE if stdout is None else stdout,
                              stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.fixture
def sq(tmp_path: Path) -> Squirrel:
    return Squirrel(tmp_path)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# --- select ----------------------------------------------------------------------------------


def test_select_honours_requirements_from_the_config_and_flags_override_one_field(sq) -> None:
    sq.config.write_text(CONFIG + '\n[requirements]\nmin_capabilities = ["chat", "vision"]\n')
    r = sq("select", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["chosen"] == "local/vision"
    assert [c["model"] for c in data["candidates"]] == ["local/vision"]
    # a flag replaces that field only: any chat model again, and the price ceiling applies
    r = sq("select", "--json", "--capability", "chat", "--max-cost-per-1k", "0.01")
    data = json.loads(r.stdout)
    assert data["chosen"] == "local/cheap"
    assert "local/dear" in data["excluded"]


def test_select_with_no_matching_model_exits_3(sq) -> None:
    r = sq("select", "--capability", "embedding")
    assert r.returncode == 3
    assert r.stdout.startswith("no model meets the requirements")
    assert "excluded:" in r.stdout
    r = sq("select", "--capability", "embedding", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["chosen"] is None


def test_select_model_flag_pins_a_model(sq) -> None:
    r = sq("select", "-m", "dear", "--json")
    assert json.loads(r.stdout)["chosen"] == "local/dear"
    r = sq("select", "--model", "local/vision", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("rank,model,score,")
    assert r.stdout.splitlines()[1].startswith("1,local/vision,")
    r = sq("select", "-m", "nope")
    assert r.returncode == 2
    assert "no model 'nope' is registered" in one_line_error(r)


# --- ask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_ask_prints_the_answer_streamed_or_not(sq, stream) -> None:
    r = sq("ask", stream, "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "squirrels hide nuts\n"
    assert "-- local/cheap |" in r.stderr and "-- budget global (" in r.stderr


def test_ask_reads_the_prompt_from_stdin(sq) -> None:
    r = sq("ask", "-", "--no-stream", stdin="where are the nuts?")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "squirrels hide nuts\n"
    # no PROMPT argument and a pipe: the pipe is the prompt
    r = sq("ask", "--json", stdin="where are the nuts?\n")
    data = json.loads(r.stdout)
    assert data["text"] == "squirrels hide nuts" and data["usage"]["input_tokens"] == 6
    r = sq("ask", "-", stdin="  \n")
    assert r.returncode == 2 and "the prompt is empty" in one_line_error(r)


def test_ask_quiet_prints_only_the_answer(sq) -> None:
    r = sq("ask", "-q", "hi")
    assert r.returncode == 0
    assert r.stdout == "squirrels hide nuts\n" and r.stderr == ""


def test_ask_after_a_fallback_names_the_model_that_answered_and_each_failure(sq) -> None:
    cfg = CONFIG.replace('reply = "squirrels hide nuts" }',
                         'reply = "squirrels hide nuts", fail = { cheap = 500 } }')
    sq.config.write_text(cfg + "\n[fallback]\nmax_attempts = 3\n")
    for stream in ("--stream", "--no-stream"):
        r = sq("ask", stream, "--provider", "local", "hi", "--max-cost-per-1k", "0.01",
               "--capability", "chat")
        # cheap fails every time; the only other model under the ceiling is "vision"
        assert r.returncode == 0, r.stderr
        report = next(x for x in r.stderr.splitlines() if x.startswith("-- local/vision |"))
        assert "answered by local/vision, ranked #2" in report
        assert "local/cheap was first" in report
        assert re.search(r"1\. local/cheap: ServerError: scripted failure 500", report)
    r = sq("ask", "--json", "hi", "--max-cost-per-1k", "0.01")
    data = json.loads(r.stdout)
    assert data["model"] == "local/vision"
    failed = [a for a in data["attempts"] if a["outcome"] == "error"]
    assert failed and all(a["model"] == "local/cheap" and a["error_type"] == "ServerError"
                          for a in failed)
    assert data["attempts"][-1] == {"number": len(data["attempts"]), "model": "local/vision",
                                    "outcome": "ok", "error_type": None, "error": None,
                                    "cost_usd": data["cost_usd"]}


def test_ask_every_attempt_failing_exits_1_with_the_attempts(sq) -> None:
    cfg = CONFIG.replace('reply = "squirrels hide nuts" }',
                         'fail = { cheap = 500, vision = 503 } }')
    sq.config.write_text(cfg)
    r = sq("ask", "--no-stream", "hi", "--max-cost-per-1k", "0.01")
    assert r.returncode == 1
    assert "FallbackExhausted" in r.stderr and "Traceback" not in r.stderr
    assert "local/cheap: ServerError: scripted failure 500" in r.stderr
    assert "local/vision: ServerError: scripted failure 503" in r.stderr


# --- errors, exit codes and JSON ---------------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (("ask", "hi", "--max-cost", "abc"), "'abc' is not an amount of dollars"),
    (("ask", "hi", "--max-cost", "-1"), "'-1' is not an amount of dollars (a decimal number "
     "such as 0.05): it must not be negative"),
    (("ask", "hi", "--max-cost", "NaN"), "it is not a finite number"),
    (("select", "--max-cost-per-1k", "Infinity"), "it is not a finite number"),
    (("select", "--max-cost-per-1k", "1e"), "is not an amount of dollars"),
    (("select", "--max-latency-ms", "inf"), "it is not a finite number"),
    (("ask", "hi", "--max-tokens", "0"), "--max-tokens"),
    # Python reads these as numbers (int(), float(), Decimal()); a user did not mean them
    (("ask", "hi", "--max-cost", "1_000"), "'1_000' is not an amount of dollars (a decimal "
     "number such as 0.05): it holds an underscore"),
    (("ask", "hi", "--max-cost", "\uff11\uff12"), "holds '\uff11' (U+FF11)"),
    (("ask", "hi", "--max-cost", " 5"), "holds whitespace"),
    (("ask", "hi", "--max-cost", "1e3"), "has an exponent"),
    (("select", "--max-latency-ms", "1_0"), "'1_0' is not a number: it holds an underscore"),
    (("select", "--max-latency-ms", "+5"), "has a + sign"),
    (("ask", "hi", "--max-tokens", "1_000"), "'1_000' is not a whole number: it holds an underscore"),
    (("ask", "hi", "--max-tokens", "\u0663"), "holds '\u0663' (U+0663)"),
    (("usage", "--days", " 7"), "holds whitespace"),
    (("usage", "--days", "+7"), "has a + sign"),
    (("ledger", "prune", "--yes", "--before", "\uff12\uff10\uff12\uff16-01-01"),
     "is not a day written YYYY-MM-DD in ASCII digits"),
    (("ledger", "prune", "--yes", "--before", "2026-02-30"), "is not a day"),
    (("usage", "--days", "999999999"), "--days"),
    (("usage", "--days", "-5"), "--days"),
    (("usage", "--days", "0"), "--days"),
])
def test_bad_options_are_one_line_and_exit_2(sq, args, needle) -> None:
    r = sq(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in one_line_error(r)


def test_bad_options_with_json_are_a_json_error_on_stdout(sq) -> None:
    for args in (("ask", "hi", "--max-cost", "abc", "--json"),
                 ("usage", "--format", "json", "--days", "999999999")):
        r = sq(*args)
        assert r.returncode == 2
        err = json.loads(r.stdout)["error"]
        assert err["type"] == "UsageError" and err["exit_code"] == 2
        assert (("--max-cost" in err["message"] and "'abc'" in err["message"])
                or "--days" in err["message"])


def test_bad_config_exits_2_in_text_and_json(sq) -> None:
    sq.config.write_text("timeout = -3\n")
    for command in (("models",), ("ask", "hi"), ("usage",)):
        r = sq(*command)
        assert r.returncode == 2, (command, r.stderr)
        assert "ConfigError: timeout: must be a finite number > 0" in one_line_error(r)
        r = sq(*command, "--json")
        assert r.returncode == 2
        err = json.loads(r.stdout)["error"]
        assert (err["type"], err["field"], err["exit_code"]) == ("ConfigError", "timeout", 2)
        assert err["message"].startswith("timeout: must be a finite number > 0")


def test_field_paths_into_providers_give_the_entry_position(sq) -> None:
    # the scripted provider reports providers.<name>.options...; the core rewrites it
    sq.config.write_text(CONFIG.replace('reply = "squirrels hide nuts" }',
                                        'fail = { cheap = "often" } }'))
    r = sq("models", "--json")
    assert r.returncode == 2
    err = json.loads(r.stdout)["error"]
    assert err["field"] == "providers[0].options.fail.cheap"
    assert err["message"].startswith("providers[0].options.fail.cheap: must be a 5xx HTTP status")


def test_refused_request_exits_1_with_json_error(sq) -> None:
    r = sq("ask", "hi", "--max-tokens", "1000", "--max-cost", "0.0000001", "--no-stream",
           "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["type"] == "CostCeilingExceeded"


def test_no_config_file_says_where_it_looked(sq) -> None:
    empty = sq.cwd / "empty"
    empty.mkdir()
    r = sq("models", config=False, cwd=empty)
    assert r.returncode == 2
    line = one_line_error(r)
    assert str(empty / "squirrel.toml") in line and "$SQUIRREL_CONFIG" in line
    assert "compile" not in line and "install squirrel-models-llama-local" not in line


def test_money_fields_are_decimal_strings_without_a_dollar_sign(sq) -> None:
    money = re.compile(r"^\d+(\.\d+)?$")
    data = json.loads(sq("ask", "--json", "hi").stdout)
    assert money.match(data["cost_usd"]) and money.match(data["budget"][0]["remaining_usd"])
    (state,) = json.loads(sq("budget", "--json").stdout)
    assert all(money.match(state[k]) for k in ("limit", "committed", "reserved", "remaining"))
    models = {m["id"]: m for m in json.loads(sq("models", "--format", "json").stdout)}
    assert models["local/cheap"]["price_per_mtok"]["input"] == "0.1"
    assert models["local/mystery"]["price_per_mtok"] is None


def test_every_command_takes_format_and_json(sq) -> None:
    for command in ("models", "budget", "usage", "select"):
        a, b = sq(command, "--json"), sq(command, "--format", "json")
        assert a.returncode == b.returncode == 0, (command, a.stderr)
        json.loads(a.stdout)
        assert json.loads(a.stdout) == json.loads(b.stdout) or command == "select"
        assert sq(command, "--format", "csv").stdout.count(",") > 0
    assert json.loads(sq("plugins", "--json").stdout)["plugins"]
    r = sq("ledger", "prune", "--before", "2026-01-01", "--yes", "--json")
    assert json.loads(r.stdout) == {"pruned_rows": 0, "before": "2026-01-01"}
    r = sq("ledger", "prune", "--before", "2026-01-01", "--json")
    assert r.returncode == 2 and "needs --yes" in json.loads(r.stdout)["error"]["message"]
    r = sq("models", "--json", "--format", "csv")
    assert r.returncode == 2 and "disagree" in json.loads(r.stdout)["error"]["message"]


@pytest.mark.parametrize("args", [("models",), ("ask", "hi", "--no-stream"), ("plugins",)])
def test_output_to_a_closed_pipe_ends_quietly(sq, args) -> None:
    """``squirrel models | head -1`` where head has left: it said "internal error
    (BrokenPipeError: ...); please report it"."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        r = sq(*args, stdout=write)
    finally:
        os.close(write)
    assert r.returncode == 1
    assert r.stderr == "", r.stderr


# --- usage -------------------------------------------------------------------------------------


def test_usage_on_the_memory_backend_says_it_forgets_at_exit(sq) -> None:
    r = sq("usage")
    assert r.returncode == 0
    assert "forgets it at exit" in r.stderr
    assert sq("usage", "-q").stderr == ""


# --- plugins -----------------------------------------------------------------------------------


def test_plugins_lists_a_header_descriptions_and_disabled_plugins(sq) -> None:
    sq.add_broken_plugin()
    r = sq("plugins", env={"SQUIRREL_DISABLE_PLUGINS": "builtin.fallback"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["PLUGIN", "STATUS", "FROM"]
    scripted = next(x for x in lines if x.startswith("scripted "))
    assert "loaded" in scripted and "sq-scripted 0.1" in scripted and "test double" in scripted
    assert re.match(r"builtin\.fallback +disabled .*SQUIRREL_DISABLE_PLUGINS", next(
        x for x in lines if x.startswith("builtin.fallback")))
    assert re.match(r"broken +failed .*no_such_module_xyz",
                    next(x for x in lines if x.startswith("broken ")))
    assert r.stderr == ""  # the failure is a row, not also a warning


def test_plugins_shows_the_hook_trace_and_warnings_about_the_environment(sq) -> None:
    """``squirrel plugins`` silenced the plugin manager's logger whole: SQUIRREL_TRACE_PLUGINS
    with -vv showed no hook call, and a typo in SQUIRREL_LOAD_PLUGINS no warning, in the
    command an author runs to see why a plugin is missing."""
    sq.add_broken_plugin()
    r = sq("-vv", "plugins", env={"SQUIRREL_TRACE_PLUGINS": "1"})
    assert r.returncode == 0, r.stderr
    assert "debug: hook register_providers -> plugin scripted" in r.stderr, r.stderr
    assert "skipped" not in r.stderr  # the broken one is a row
    r = sq("plugins", env={"SQUIRREL_LOAD_PLUGINS": "scriptd"})
    assert r.stderr.startswith("warning: SQUIRREL_LOAD_PLUGINS names 'scriptd', which no installed plugin has"), \
        r.stderr
    data = json.loads(sq("plugins", "--json").stdout)
    status = {p["name"]: p["status"] for p in data["plugins"]}
    assert status["broken"] == "failed" and status["scripted"] == "loaded"


def test_a_broken_plugin_is_one_warning_per_command(sq) -> None:
    sq.add_broken_plugin()
    r = sq("select")
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if "broken" in x]
    assert len(warnings) == 1 and warnings[0].startswith("error: plugin 'broken' skipped")
    assert "Traceback" not in r.stderr


def test_strict_plugins_help_works_and_commands_fail_in_one_line(sq) -> None:
    sq.add_broken_plugin()
    strict = {"SQUIRREL_STRICT_PLUGINS": "1"}
    r = sq("--help", env=strict)
    assert r.returncode == 0
    assert "ask" in r.stdout and "Traceback" not in r.stderr
    r = sq("ask", "--help", env=strict)
    assert r.returncode == 0 and "--model" in r.stdout
    r = sq("models", env=strict)
    assert r.returncode == 2
    assert "PluginError" in one_line_error(r) and "no_such_module_xyz" in r.stderr
    r = sq("models", "--json", env=strict)
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["type"] == "PluginError"


def test_verbose_and_quiet_set_what_is_logged(sq) -> None:
    trace = {"SQUIRREL_TRACE_PLUGINS": "1"}  # hook calls are logged at DEBUG
    assert "debug: hook register_providers" not in sq("select", env=trace).stderr
    assert "debug: hook register_providers" in sq("select", "-vv", env=trace).stderr
    assert "debug: hook register_providers" in sq("-vv", "select", env=trace).stderr
    sq.add_broken_plugin()
    assert "plugin 'broken' skipped" in sq("select").stderr
    assert sq("select", "-q").stderr == ""


# --- telemetry ---------------------------------------------------------------------------------


def test_telemetry_from_the_config_reaches_an_otlp_collector(sq) -> None:
    from .test_telemetry import Collector

    collector = Collector()
    try:
        sq.config.write_text(CONFIG + f'\n[telemetry]\notlp_endpoint = "{collector.url}"\n')
        r = sq("ask", "--no-stream", "-q", "hi")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "squirrels hide nuts\n"
        # the command pushed its metrics when it ended
        assert "gen_ai.client.operation.duration" in collector.metric_names()
    finally:
        collector.close()


# --- where options go, given twice, and Ctrl-C -------------------------------------------------

def test_config_before_the_command_is_the_same_as_after(sq, tmp_path: Path) -> None:
    """``squirrel --config FILE models`` (as ``git -C`` is written) was "No such option"."""
    before = sq("--config", str(sq.config), "models", "--format", "csv", config=False)
    after = sq("models", "--format", "csv")
    assert before.returncode == 0, before.stderr
    assert before.stdout == after.stdout and "local/cheap" in before.stdout
    other = tmp_path / "other.toml"
    other.write_text("timeout = 5\n")
    r = sq("--config", str(other), "models")  # the fixture adds --config squirrel.toml after
    assert r.returncode == 2
    assert "--config is given twice" in one_line_error(r)


@pytest.mark.parametrize("args", [
    ("models", "--config", "missing.toml"),  # the fixture's own --config comes after: ignored
    ("ask", "hi", "--max-tokens", "5", "--max-tokens=6"),
    ("select", "--max-latency-ms", "10", "--max-latency-ms", "20"),
    ("models", "--format", "csv", "--format", "json"),
])
def test_an_option_given_twice_with_different_values_is_a_usage_error(sq, args) -> None:
    """click keeps the last value of a repeated option without a word: ``--config a.toml
    --config b.toml`` ignored a.toml."""
    r = sq(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "is given twice" in (r.stdout if "--format" in args else one_line_error(r))


def test_a_key_given_twice_is_not_quoted(sq) -> None:
    r = sq("ask", "hi", "--key", "team-a", "--key", "team-b")
    assert r.returncode == 2
    assert one_line_error(r) == "Error: --key is given twice with different values; give it once"


def test_an_option_given_twice_alike_or_a_repeatable_one_is_fine(sq) -> None:
    r = sq("ask", "hi", "--max-tokens", "5", "--max-tokens", "5", "-m", "local/cheap", "-m", "local/dear",
           "--no-stream", "-q")
    assert r.returncode == 0, r.stderr


def _interrupt_when_reading_stdin(argv: list[str], env: dict[str, str], cwd: Path
                                  ) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, which reads its prompt from standard input, and press Ctrl-C once it is
    blocked reading it (a kernel state, not a guessed delay)."""
    import glob
    import signal
    import time

    def as_from_a_terminal() -> None:
        # Ctrl-C as a terminal's foreground command gets it: a run started as a background
        # job (``.ci/run &``, nohup) hands its children SIGINT ignored, and Python then keeps
        # it ignored: the command read its prompt on to the end of input (exit 2, CI).
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    try:
        limit = time.monotonic() + 60
        while not any("pipe_read" in Path(w).read_text()
                      for w in glob.glob(f"/proc/{proc.pid}/task/*/wchan")):
            assert proc.poll() is None and time.monotonic() < limit, "never read standard input"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        # Standard input stays open until the command has ended, as a terminal's does after
        # Ctrl-C (communicate() would close it at once, and a lost interrupt would then
        # read as an empty prompt instead of a hang).
        proc.wait(timeout=60)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc wchan")
@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_exits_130_with_one_line(sq, as_json: bool) -> None:
    """Ctrl-C was click's "Aborted!" with exit code 1, a failed request's, and no JSON
    object for --json."""
    assert SQUIRREL is not None
    env = dict(sq.env, PYTHONPATH=os.pathsep.join(str(d) for d in sq.dists))
    argv = [SQUIRREL, "ask", "-", "--config", str(sq.config), *(["--json"] if as_json else [])]
    r = _interrupt_when_reading_stdin(argv, env, sq.cwd)
    assert r.returncode == 130, (r.stdout, r.stderr)
    if as_json:
        err = json.loads(r.stdout)["error"]
        assert (err["type"], err["exit_code"]) == ("Interrupted", 130)
    else:
        assert one_line_error(r) == "Error: Interrupted: stopped by Ctrl-C"


def test_ctrl_c_while_the_command_is_still_importing_is_one_line(tmp_path: Path) -> None:
    """The first 0.2 s of every command import click and the core; Ctrl-C then printed a
    KeyboardInterrupt traceback. Played exactly: an import hook raises it as click loads."""
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'click':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from squirrel_models.console import main\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code, "models"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "Error: Interrupted: stopped by Ctrl-C" and "Traceback" not in r.stderr
