"""docs/testing.md's examples pass as a reader would run them: the blocks marked
``<!-- test: file NAME -->`` are written to NAME, those marked ``<!-- test: append NAME -->``
appended to it, in a fresh folder where pytest then runs (in its own process, with the
core's pytest plugin found through its entry point, as after ``pip install``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.marked import marked_blocks


def test_the_examples_pass_as_written(tmp_path: Path) -> None:
    files: dict[str, str] = {}
    for m in marked_blocks("docs/testing.md"):
        if m.group("what") in ("file", "append"):
            files[m.group("name")] = files.get(m.group("name"), "") + "\n" + m.group("code")
    assert {"conftest.py", "test_mine.py", "test_command.py"} <= files.keys()
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    if shutil.which("tr") is None:
        pytest.skip("the command provider's example runs tr")
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           "-W", "error"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for test in ("test_cost_is_recorded", "test_falls_back"):
        for backend in ("asyncio", "trio"):
            assert f"test_mine.py::{test}[{backend}] PASSED" in done.stdout
    assert done.stdout.count("test_command.py::TestCommandProvider::") >= 10
