"""A fresh environment with the local core installed, as a reader's would be: ``uv venv``
and an editable path install of ``core/`` (no index needed for the core), with a ``pip`` on
``PATH`` that is ``uv pip --python <the fresh environment>``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def uv() -> list[str]:
    found = shutil.which("uv")
    if found is not None:
        return [found]
    try:
        import uv as uv_module  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail("uv is needed to make the fresh environment (./nox puts it on PATH)")
    return [uv_module.find_uv_bin()]


def fresh_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(the environment variables to run commands in it with, its python)."""
    cmd = uv()
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    # Only the fresh environment: never the one running this test (nox sets UV_PYTHON to it).
    env = {k: v for k, v in os.environ.items()
           if k not in ("UV_PYTHON", "UV_PROJECT_ENVIRONMENT", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME")}
    env |= {"VIRTUAL_ENV": str(venv), "UV_NO_PROGRESS": "1"}
    for args in ([*cmd, "venv", "-q", "-p", sys.executable, str(venv)],
                 [*cmd, "pip", "install", "-q", "--python", str(python), "-e", str(ROOT / "core")]):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    shims = tmp_path / "shims"
    shims.mkdir()  # "pip install X" is "uv pip install --python <the fresh environment> X"
    (shims / "pip").write_text(f'#!/bin/sh\nsub=$1; shift\nexec {" ".join(cmd)} pip "$sub" --python "{python}" "$@"\n')
    (shims / "pip").chmod(0o755)
    env["PATH"] = os.pathsep.join([str(shims), str(venv / "bin"), env.get("PATH", "")])
    assert shutil.which("squirrel", path=env["PATH"]) == str(venv / "bin" / "squirrel")
    return env, python
