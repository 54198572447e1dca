"""What ``pip install`` gives a user, not what an editable install of the repository shows:
each distribution's wheel, built as a release would build it (``uv build --wheel``), holds
every file of its package's source folder (templates, data) and the ``py.typed`` marker, so a
user's ``mypy`` reads the plugin's types instead of stopping at ``import-untyped``; and so
does the wheel of a plugin ``squirrel plugin new`` writes (its ``pyproject.toml`` configures
``mypy --strict`` for its author, and its users type-check against it too)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
from squirrel_models import scaffold

from tests.docs import freshenv

ROOT = freshenv.ROOT
#: every distribution folder of the repository (a new one is picked up here by its pyproject)
FOLDERS = sorted(str(p.parent.relative_to(ROOT)) for p in
                 [*ROOT.glob("core/pyproject.toml"), *ROOT.glob("plugins/*/pyproject.toml"),
                  *ROOT.glob("docs/example-plugin/pyproject.toml")])


def build_wheel(folder: Path, out: Path) -> list[str]:
    """Build ``folder``'s wheel into ``out`` and return the names it holds."""
    done = subprocess.run([*freshenv.uv(), "build", "--wheel", "-q", "--out-dir", str(out), str(folder)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def source_files(package: Path) -> set[str]:
    """The package's files as a wheel names them (``package/sub/file``), caches left out."""
    return {str(p.relative_to(package.parent)) for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


def test_every_distribution_is_checked() -> None:
    assert {"core", "plugins/openai", "plugins/huggingface", "docs/example-plugin"} <= set(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_wheel_holds_the_whole_package_and_its_py_typed(tmp_path: Path, folder: str) -> None:
    (package,) = (ROOT / folder / "src").glob("squirrel_models*")
    names = set(build_wheel(ROOT / folder, tmp_path))
    assert f"{package.name}/py.typed" in names, f"{folder}: no py.typed in its wheel"
    missing = source_files(package) - names
    assert not missing, f"{folder}: its wheel lacks {sorted(missing)}"
    # every distribution says license = "MIT": the text travels with it, as MIT requires
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), \
        f"{folder}: its wheel carries no LICENSE"


@pytest.mark.parametrize("kind", list(scaffold.KINDS))
def test_a_new_plugin_wheel_is_typed(tmp_path: Path, kind: str) -> None:
    root = scaffold.new_plugin("tinychat", tmp_path, kind)
    names = build_wheel(root, tmp_path / "dist")
    assert "squirrel_models_tinychat/py.typed" in names, names
