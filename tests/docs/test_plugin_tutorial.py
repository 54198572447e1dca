"""docs/plugin-tutorial.md, followed as a reader would, every snippet executed in order.

Each fenced block is followed by a marker saying what to do with it: ``<!-- shell -->`` (run
it with bash, in the folder the previous shell block ended in), ``<!-- write: PATH -->``
(write it to PATH), ``<!-- run -->`` (run it with Python) or ``<!-- output -->`` (what the
previous shell block prints). The end-to-end test makes a fresh environment with ``uv venv``,
installs the local core into it (an editable path install: no index needed for the core),
then plays the blocks: ``squirrel plugin new`` (whose distribution, as written, installs and
passes its own tests), the sixty-line provider against the fake
server, ``pip install -e ".[test]"`` (``pip`` is ``uv pip`` here), the plugin's own tests (the
HTTP conformance kit), ``squirrel plugins``, and routing with a fallback to the command-line
example plugin. The plugin is made in a folder next to a link to this checkout's ``docs/``, as
if the reader ran the tutorial at the root of a squirrel-models checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import freshenv

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "plugin-tutorial.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n(?:<!-- (shell|run|output|write: [^ ]+) -->\n)?", re.S | re.M)


def blocks() -> list[tuple[str, str, str]]:
    """(language, code, marker) of every fenced block, in order ("" when unmarked)."""
    return [(m.group(1), m.group(2), m.group(3) or "") for m in BLOCK.finditer(TUTORIAL.read_text())]


def test_every_snippet_is_executed() -> None:
    found = blocks()
    assert len(found) >= 8
    unmarked = [code.splitlines()[0] for _, code, marker in found if not marker]
    assert not unmarked, f"blocks the docs tests do not execute: {unmarked}"
    assert TUTORIAL.read_text().count("```") == 2 * len(found)  # no block the pattern missed


def test_the_provider_is_about_sixty_lines() -> None:
    (provider,) = [code for _, code, marker in blocks() if marker.endswith("provider.py")]
    assert 45 <= len(provider.splitlines()) <= 70


def test_the_boundary_example_runs() -> None:
    (code,) = [code for _, code, marker in blocks() if marker == "run"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HTTP 503 (server_error): overloaded" in out.stdout


def test_the_tutorial_end_to_end(tmp_path: Path) -> None:
    uv = freshenv.uv()
    env, python = freshenv.fresh_env(tmp_path)
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")

    cwd = work
    outputs: list[str] = []
    for _, code, marker in blocks():
        if marker.startswith("write: "):
            target = work / marker.removeprefix("write: ")
            assert target.parent.is_dir(), f"{target.parent} should exist by now"
            target.write_text(code)
        elif marker == "shell":
            script = f"set -e\ncd '{cwd}'\n{code}\npwd > '{tmp_path}/cwd'\n"
            done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            cwd = Path((tmp_path / "cwd").read_text().strip())
            outputs.append(done.stdout)
            if "squirrel plugin new" in code:  # the template as written: installs, passes its tests
                fresh = work / "squirrel-models-tinychat"
                check = (f"set -e\ncd '{fresh}'\npip install -q -e '.[test]'\npython -m pytest -q -p no:cacheprovider"
                         f"\npip uninstall -q squirrel-models-tinychat\n")
                done = subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True, timeout=900)
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
                assert re.search(r"\b(2[0-9]|[3-9][0-9]) passed", done.stdout), done.stdout[-2000:]
        elif marker == "output":
            assert outputs[-1].strip().splitlines()[-len(code.strip().splitlines()):] == code.strip().splitlines()

    plugin = work / "squirrel-models-tinychat"
    new, tests, route = outputs
    assert "wrote" in new
    assert re.search(r"\d+ passed", tests) and "failed" not in tests and "error" not in tests.lower()
    assert "TestTinychatConformance" not in tests  # -q: a summary, no failures listed
    assert re.search(r"^tinychat\s+loaded\s+squirrel-models-tinychat 0\.1\.0", tests, re.M), tests
    assert "backup/upper -> SAY HELLO." in route
    # Installed into the fresh environment, and only there.
    listed = subprocess.run([*uv, "pip", "list", "--python", str(python)], env=env, capture_output=True,
                            text=True, timeout=120).stdout
    assert "squirrel-models-tinychat" in listed and "squirrel-models-command" in listed
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(PackageNotFoundError):
        distribution("squirrel-models-tinychat")
    assert (plugin / "src" / "squirrel_models_tinychat" / "__init__.py").read_text().count("TinychatProvider") >= 2
