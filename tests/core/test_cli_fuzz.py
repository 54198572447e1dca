"""Any command line ends in a result or one error line: every ``squirrel`` subcommand, given
random arguments (its own options with bad values, unknown options, stray arguments, empty,
huge and unicode strings) and a configuration that is valid, broken, missing or a folder, exits
0, 1, 2 or 3; on an error, one line starting with ``Error`` (a JSON error object with
``--json``), never a traceback. Through click's runner, in this process, with the scripted
provider installed as a real entry point (``tests/core/test_cli_command.py`` runs the
installed command itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models.cli import cli

from ..support import secret_scanner
from .dists import SCRIPTED_DIST, install, make_dist

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEY = secret_scanner.canary("sk-cli-fuzz-6d2a9e1c4b7f")


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    out: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out |= _commands(command, (*path, name))
        else:
            out[(*path, name)] = command
    return out


COMMANDS = _commands(cli)
CONFIGS = {
    "valid": """
[[providers]]
name = "local"
type = "scripted"
options = { models = ["cheap"], reply = "nuts" }
models = [{ name = "cheap", price = { input = "0.1", output = "0.2" } }]
[budget]
limits = [{ scope = "global", limit = "1" }]
""",
    "bad types": 'timeout = "soon"\n[budget]\nlimits = 3\n',
    "bad TOML": "[budget\nlimits = [",
    "unknown plugin": '[[providers]]\nname = "x"\ntype = "no-such-plugin"\n',
    "secret in a URL": '[[providers]]\nname = "o"\ntype = "scripted"\noptions = { base_url = '
                       f'"http://u:{KEY}@h/v1" }}\n',
}
BAD_VALUES = st.one_of(st.sampled_from(["", " ", "-1", "0", "nan", "inf", "1e999", "-", "--", "x" * 5000,
                                        "é☃\u202e", "2026-13-45", "../..", "NaN", "1" * 400]),
                       st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                               max_size=8))


def _tokens(command: click.Command) -> st.SearchStrategy[list[str]]:
    names = [n for p in command.params if isinstance(p, click.Option) for n in p.opts + p.secondary_opts
             if n not in ("--config", "--help")]
    token = st.one_of(st.sampled_from(names or ["--json"]), st.sampled_from(["--bogus", "-Z", "--json"]),
                      BAD_VALUES)
    return st.lists(token, max_size=6)


@pytest.fixture
def configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    install(monkeypatch, make_dist(tmp_path / "dist", "sq-scripted", entry_points=SCRIPTED_DIST))
    monkeypatch.delenv("SQUIRREL_CONFIG", raising=False)
    monkeypatch.setenv("SQUIRREL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # plugin new writes here
    paths = {"missing": str(tmp_path / "missing.toml"), "a folder": str(tmp_path)}
    for name, text in CONFIGS.items():
        path = tmp_path / f"{name.replace(' ', '-')}.toml"
        path.write_text(text, encoding="utf-8")
        paths[name] = str(path)
    return paths


@FUZZ
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)),
       config=st.sampled_from(["valid", "missing", "a folder", *CONFIGS]))
def test_any_command_line_ends_in_a_result_or_one_error_line(configs: dict[str, str], data: Any,
                                                             command: tuple[str, ...], config: str) -> None:
    args = [*command, *data.draw(_tokens(COMMANDS[command]), label="args"), "--config", configs[config]]
    result = CliRunner().invoke(cli, args, input="")
    secret_scanner.collect(result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, repr(result.exception), result.stderr[-2000:])
    assert result.exit_code in (0, 1, 2, 3), (args, result.exit_code)
    assert "Traceback" not in result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr
    if result.exit_code == 0:
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    if errors:
        assert len(errors) == 1, (args, result.stderr[-2000:])
    elif command == ("select",) and result.exit_code == 3:  # the ranking says why none is fit
        assert "no model meets the requirements" in result.stdout, result.stdout
    else:  # --json: the error is one JSON object on standard output
        assert json.loads(result.stdout)["error"]["exit_code"] == result.exit_code, (args, result.stdout)
