"""What a plugin author starts from passes the linters: what ``squirrel plugin new`` writes
passes those its own ``pyproject.toml`` configures (``ruff check``, ``ruff format --check``,
``mypy --strict``), as an author runs them on day one, for every kind, for a short name and for
the longest name the scaffold accepts; the tutorial's files written into it pass them too; and the
example plugin, docs/example-plugin, passes ``mypy --strict``
and the repository's ruff settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from squirrel_models import scaffold

from tests.docs.test_plugin_tutorial import blocks

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "example-plugin"

LONGEST = "a" + "-bcdefghi" * 4 + "jkl"  # 40 characters: the longest name the scaffold takes


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is needed (the docs session installs it)")
    return found


def _passes_its_linters(root: Path, tmp_path: Path) -> None:
    """The lint command the scaffold's README gives, with the settings of its pyproject.toml."""
    for cmd in ([_tool("ruff"), "check", "--no-cache", "."], [_tool("ruff"), "format", "--no-cache", "--check", "."],
                [_tool("mypy"), "--no-incremental", "--cache-dir", str(tmp_path / ".mypy")]):
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd[1:])}\n{done.stdout[-3000:]}{done.stderr[-2000:]}"


@pytest.mark.parametrize("kind", list(scaffold.KINDS))
@pytest.mark.parametrize("name", ["tinychat", LONGEST])
def test_the_scaffold_passes_its_own_linters(tmp_path: Path, name: str, kind: str) -> None:
    assert len(name) == scaffold.MAX_NAME or name == "tinychat"
    root = scaffold.new_plugin(name, tmp_path, kind)
    _passes_its_linters(root, tmp_path)


def test_the_tutorials_files_pass_the_scaffolds_linters(tmp_path: Path) -> None:
    """The tutorial's provider, tests and route.py, written into the scaffold, pass the lint
    command its README gives: they failed ``ruff format --check`` (wrapped by hand)."""
    root = scaffold.new_plugin("tinychat", tmp_path, "provider")
    written = [(marker.removeprefix("write: "), code) for _, code, marker in blocks() if marker.startswith("write: ")]
    assert len(written) == 3
    for path, code in written:
        (tmp_path / path).write_text(code)
    _passes_its_linters(root, tmp_path)


def test_the_example_plugin_passes_mypy_strict_and_ruff(tmp_path: Path) -> None:
    """mypy --strict found a real bug in it: a message of text parts was a TypeError."""
    for cmd in ([_tool("mypy"), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"), "src"],
                [_tool("ruff"), "check", "--no-cache", "."]):
        done = subprocess.run(cmd, cwd=EXAMPLE, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd[1:])}\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
