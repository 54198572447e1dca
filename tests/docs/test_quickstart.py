"""The quick start works as written: its configuration file loads, the Python blocks marked
``<!-- test: run -->`` run and print what their comments say, and the CLI commands it shows
succeed. The README's marked examples run with the quick start's ``squirrel.toml``.

A block marked ``<!-- test: file NAME -->`` is written to NAME in a temporary folder where
the runnable blocks then run, each in a fresh interpreter. The block marked
``<!-- test: budget -->`` replaces the file's ``[budget]`` table, as the page tells a reader to.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from squirrel_models.cli import cli
from squirrel_models.config import load_toml

from tests.docs.marked import marked_blocks

pytestmark = pytest.mark.skipif(shutil.which("python3") is None,
                                reason="the quick start's model runs python3")


def blocks() -> list[re.Match[str]]:
    return marked_blocks("docs/quickstart.md")


def runnable() -> list[tuple[int, str]]:
    return [(i, m.group("code")) for i, m in enumerate(blocks()) if m.group("what") == "run"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for m in blocks():
        if m.group("name"):
            (tmp_path / m.group("name")).write_text(m.group("code"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SQUIRREL_CONFIG", raising=False)
    return tmp_path


def test_the_quickstart_has_runnable_blocks() -> None:
    assert len(runnable()) >= 3
    assert any(m.group("name") == "squirrel.toml" for m in blocks())


def test_the_configuration_file_loads(workdir: Path) -> None:
    cfg = load_toml(workdir / "squirrel.toml")
    assert [p.type for p in cfg.providers] == ["command"]
    assert [m.name for m in cfg.providers[0].models] == ["echo", "shout"]


#: ``print(...)  # what it prints``: the comment is the line printed, ``...`` standing for
#: any text.
PRINTS = re.compile(r"^[ \t]*print\(.*\)[ \t]+# (?P<shown>.+)$", re.MULTILINE)


def assert_prints_what_it_says(code: str, stdout: str) -> None:
    """Each commented ``print`` shows its comment, in order, on a line of ``stdout``."""
    lines = iter(stdout.splitlines())
    for shown in PRINTS.findall(code):
        pattern = re.compile(".*".join(re.escape(part.strip()) for part in shown.split("...")))
        assert any(pattern.search(line) for line in lines), (
            f"no line shows {shown!r} (in order) in:\n{stdout}")


@pytest.mark.parametrize(("index", "code"), runnable(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_runnable_block(index: int, code: str, workdir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"block {index} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip()
    assert_prints_what_it_says(code, done.stdout)


@pytest.mark.parametrize("code", [m.group("code") for m in marked_blocks("README.md")
                                  if m.group("what") == "run"])
def test_the_readme_examples_run_with_the_quickstart_configuration(code: str, workdir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "NAME THREE SQUIRRELS.!" in done.stdout


def test_the_printed_lines_are_checked() -> None:
    assert sum(len(PRINTS.findall(code)) for _, code in runnable()) >= 10
    with pytest.raises(AssertionError, match="no line shows"):
        assert_prints_what_it_says('print(x)  # worst case $0.000... exceeds', "worst case $0.004064 exceeds")
    assert_prints_what_it_says('print(x)  # score 0.851 (cost 0.87, ...)', "score 0.851 (cost 0.87, q 1)")


@pytest.mark.parametrize("args", [
    ["plugins"],
    ["models"],
    ["select", "--explain"],
    ["ask", "What is a squirrel?"],
    ["budget"],
])
def test_cli_commands(args: list[str], workdir: Path) -> None:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if args[0] == "ask":
        assert "You said: What is a squirrel?" in result.stdout or "WHAT IS A SQUIRREL?" in result.stdout


def test_the_sqlite_budget_lasts_from_one_command_to_the_next(workdir: Path) -> None:
    (block,) = [m.group("code") for m in blocks() if m.group("what") == "budget"]
    config = workdir / "squirrel.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text[: text.index("\n[budget]")] + "\n" + block, encoding="utf-8")
    for _ in range(2):
        result = CliRunner().invoke(cli, ["ask", "-q", "What is a squirrel?"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert (workdir / "budget.sqlite3").is_file()
    (state,) = json.loads(CliRunner().invoke(cli, ["budget", "--json"]).stdout)
    assert Decimal(state["committed"]) > 0
    (row,) = json.loads(CliRunner().invoke(cli, ["usage", "--json"]).stdout)
    assert row["attempts"] == 2
