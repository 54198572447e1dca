"""``squirrel plugin new NAME [--kind KIND]``: a whole distribution or nothing; bad names, bad
kinds and existing folders are refused with exit code 2; what each kind writes passes its own
tests (its conformance suite among them) with its entry point installed. (The docs tests
install what it writes into a fresh environment and run its tests: the provider in
tests/docs/test_plugin_tutorial.py, every kind in tests/docs/test_scaffold_kinds.py.)"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from squirrel_models import SquirrelError, scaffold
from squirrel_models.cli import _PLUGIN_KINDS, cli

from .dists import install, make_dist


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plugin", "new", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_writes_a_whole_distribution(tmp_path: Path) -> None:
    code, out = run("tiny-chat", "--dir", str(tmp_path))
    assert code == 0, out
    root = tmp_path / "squirrel-models-tiny-chat"
    assert str(root) in out
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/squirrel_models_tiny_chat/__init__.py",
                     "src/squirrel_models_tiny_chat/provider.py", "src/squirrel_models_tiny_chat/py.typed",
                     "tests/test_tiny_chat.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "squirrel-models-tiny-chat"
    assert project["project"]["entry-points"]["squirrel_models"] == {"tiny-chat": "squirrel_models_tiny_chat"}
    for py in root.rglob("*.py"):
        ast.parse(py.read_text(), str(py))  # valid Python, every placeholder filled
        assert "${" not in py.read_text()
    assert "class TinyChatProvider(SimpleProvider)" in (root / "src/squirrel_models_tiny_chat/provider.py").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["squirrel-models-tiny-chat"]  # no temporary left


@pytest.mark.parametrize("name", ["", "Tiny", "tiny chat", "9lives", "-x", "x-", "a--b", "tiny_chat", "x/y",
                                  "../evil", "é", "x" * 41, "squirrel-models-tiny", "a\nb", "."])
def test_a_bad_name_is_refused_with_exit_code_2_and_nothing_written(tmp_path: Path, name: str) -> None:
    code, out = run("--dir", str(tmp_path), "--", name)  # "--": "-x" is a name here, not an option
    assert code == 2
    assert "NAME" in out and ("not a plugin name" in out or "short name" in out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["folder", "file", "symlink"])
def test_an_existing_target_is_never_overwritten(tmp_path: Path, existing: str) -> None:
    target = tmp_path / "squirrel-models-mine"
    if existing == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif existing == "file":
        target.write_text("mine")
    else:
        target.symlink_to(tmp_path / "nowhere")
    code, out = run("mine", "--dir", str(tmp_path))
    assert code == 2 and "already exists" in out
    if existing == "folder":
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
    elif existing == "file":
        assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["squirrel-models-mine"]


@pytest.mark.parametrize("taken_by", ["entry point", "distribution"])
def test_a_name_an_installed_plugin_has_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   taken_by: str) -> None:
    site = tmp_path / "site"
    if taken_by == "entry point":
        make_dist(site, "someone-elses-dist", entry_points={"mine": "mine_module"})
    else:
        make_dist(site, "squirrel-models-mine", entry_points={"other": "mine_module"})
    install(monkeypatch, site)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out = run("mine", "--dir", str(out_dir))
    assert code == 2 and "is taken" in out
    assert list(out_dir.iterdir()) == []
    assert run("not-mine", "--dir", str(out_dir))[0] == 0


@pytest.mark.parametrize(("name", "kind"), [("cost", "scoring"), ("tags", "scoring"), ("memory", "budget"),
                                          ("retry", "fallback"), ("graph", "fallback"), ("cheaper", "fallback"),
                                          ("memory", "ratelimit")])
def test_a_name_a_built_in_has_in_its_kind_is_refused(tmp_path: Path, name: str, kind: str) -> None:
    """A plugin's entry point loads before the built-ins and the first of a name is kept: a
    scoring rule named cost replaced the built-in one for every router in the environment
    (the built-in plugin then failed as 'already provided'). Another kind may use the name."""
    code, out = run(name, "--kind", kind, "--dir", str(tmp_path))
    assert code == 2 and "is taken" in out and "built-in plugin" in out
    assert list(tmp_path.iterdir()) == []
    other = "provider" if kind != "provider" else "scoring"
    assert run(name, "--kind", other, "--dir", str(tmp_path))[0] == 0


def test_a_name_an_installed_plugin_gives_its_kind_is_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed plugin's backend named unlike its entry point (sqlite-budget's sqlite)."""
    site = tmp_path / "site"
    make_dist(site, "squirrel-models-store", entry_points={"store-plugin": "store_module"},
              modules={"store_module": """
                  from squirrel_models import BudgetBackendType, hookimpl
                  from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

                  @hookimpl
                  def register_budget_backends():
                      return [BudgetBackendType("shelf", MemoryBudgetBackend, description="a shelf")]
              """})
    install(monkeypatch, site)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out = run("shelf", "--kind", "budget", "--dir", str(out_dir))
    assert code == 2 and "'store-plugin' already provides the budget 'shelf'" in out
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["openai", "huggingface", "llama-local", "sqlite-budget", "postgres-budget",
                                  "redis", "gateway"])
def test_the_name_of_a_plugin_of_the_project_is_refused_installed_or_not(tmp_path: Path, name: str) -> None:
    """squirrel-models-openai (say) is the project's own: a second distribution of that name
    replaces it when installed (in the core's tests it is not installed)."""
    code, out = run(name, "--dir", str(tmp_path))
    assert code == 2 and "is a plugin of squirrel-models itself" in out
    assert list(tmp_path.iterdir()) == []


def test_a_missing_parent_folder_is_exit_code_2(tmp_path: Path) -> None:
    code, out = run("mine", "--dir", str(tmp_path / "nope"))
    assert code == 2 and "not a folder" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("parent", ["x" * 5000, "a\nb"])
def test_a_parent_the_system_cannot_look_up_is_one_line_with_exit_code_2(tmp_path: Path, parent: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A --dir too long for the system raised OSError from is_dir(): 'internal error ...
    please report it', quoting the 5,000-character path; a line break split the message."""
    monkeypatch.chdir(tmp_path)
    code, out = run("mine", "--dir", parent)
    assert code == 2, out
    (line,) = out.strip().splitlines()
    assert line.startswith("Error: ") and "internal error" not in line and len(line) < 400, line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(scaffold.PluginTarget):  # a NUL, which no command line carries: ValueError
        scaffold.new_plugin("mine", "no\x00pe")


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    real = Path.write_text

    def write_then_fail(self: Path, *args: object, **kw: object) -> int:
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write_then_fail)
    code, out = run("mine", "--dir", str(tmp_path))
    assert code == 2 and "No space left on device" in out
    assert written and list(tmp_path.iterdir()) == []


def test_plugin_files_are_the_templates_filled_in() -> None:
    files = scaffold.plugin_files("my-api2")
    assert "squirrel_models_my_api2" in files["pyproject.toml"]
    assert "class MyApi2Provider" in files["src/squirrel_models_my_api2/provider.py"]
    assert "tests/test_my_api2.py" in files


#: kind -> the module that holds the implementation, and the class or line that proves it is there.
MADE = {"provider": ("provider.py", "class TinyChatProvider(SimpleProvider)"),
        "budget": ("budget.py", "class TinyChatBudget:"),
        "scoring": ("scoring.py", 'RULE = ScoringRule(\n    "tiny-chat",'),
        "fallback": ("fallback.py", "class TinyChatStrategy:"),
        "ratelimit": ("ratelimit.py", "class TinyChatRateLimitStore:"),
        "tokens": ("tokens.py", 'TAG = "tiny-chat"')}


def test_every_kind_is_offered() -> None:
    assert tuple(scaffold.KINDS) == _PLUGIN_KINDS == tuple(MADE)


@pytest.mark.parametrize("kind", list(MADE))
def test_each_kind_writes_its_own_distribution(tmp_path: Path, kind: str) -> None:
    code, out = run("tiny-chat", "--kind", kind, "--dir", str(tmp_path))
    assert code == 0, out
    root = tmp_path / "squirrel-models-tiny-chat"
    module, proof = MADE[kind]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == sorted(["README.md", "pyproject.toml", "src/squirrel_models_tiny_chat/__init__.py",
                            f"src/squirrel_models_tiny_chat/{module}", "src/squirrel_models_tiny_chat/py.typed",
                            "tests/test_tiny_chat.py"])
    assert proof in (root / "src/squirrel_models_tiny_chat" / module).read_text()
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["squirrel_models"] == {"tiny-chat": "squirrel_models_tiny_chat"}
    assert project["project"]["description"] == f"squirrel-models {scaffold.KINDS[kind][0]}: tiny-chat."
    assert ("httpx>=0.27" in project["project"]["dependencies"]) == (kind == "provider")
    assert project["project"]["dependencies"][0].startswith("squirrel-models>=")
    for text in (p.read_text() for p in root.rglob("*") if p.is_file()):
        assert "${" not in text


@pytest.mark.parametrize("kind", list(MADE))
def test_what_each_kind_writes_passes_its_own_tests_and_works(tmp_path: Path, kind: str) -> None:
    """The generated tests, run by pytest in the generated project with its entry point
    installed (a real ``.dist-info`` on the path, as pip leaves it): discovery through the
    entry point, and the core's conformance suite of the kind, all passing. Then the plugin,
    configured as its README says, at work in a ModelManager (tests/core/scaffolded.py)."""
    (tmp_path / "out").mkdir()
    root = scaffold.new_plugin(f"my-{kind}", tmp_path / "out", kind)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    site = make_dist(tmp_path / "site", project["name"], entry_points=project["entry-points"]["squirrel_models"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root / "src")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    assert "test_plugin_is_discovered_through_its_entry_point PASSED" in out, out[-3000:]
    assert len(re.findall(r"::TestMy\w+Conformance::\S+ PASSED", out)) >= 5, out[-3000:]
    assert not re.search(r"\b(failed|error)\b", out.splitlines()[-1]), out[-500:]
    # Configured as its README says, it does its job in a ModelManager.
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("scaffolded.py")), kind, str(root)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"{kind} ok" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("kind", ["", "Provider", "budgets", "scorer", "--x", "é", "x" * 100])
def test_a_bad_kind_is_refused_with_exit_code_2_and_nothing_written(tmp_path: Path, kind: str) -> None:
    code, out = run("mine", "--dir", str(tmp_path), "--kind", kind)
    assert code == 2
    assert "--kind" in out and "not a plugin kind" in out
    assert "provider, budget, scoring, fallback, ratelimit, tokens" in out
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(scaffold.PluginKindError, match="not a plugin kind") as info:
        scaffold.new_plugin("mine", tmp_path, kind)
    assert isinstance(info.value, SquirrelError)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_name_is_a_squirrel_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(scaffold.PluginNameError, match="'Tiny' is not a plugin name") as info:
        scaffold.new_plugin("Tiny", tmp_path, "budget")
    assert isinstance(info.value, SquirrelError)
    assert list(tmp_path.iterdir()) == []
