"""A relative ``path`` is relative to the configuration file, not the current directory:
the same configuration run from another folder keeps the same budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.core.dists import SCRIPTED_DIST, make_dist

CONFIG = """
[[providers]]
name = "p"
type = "scripted"
options = { models = ["a"], reply = "nuts" }
models = [{ name = "a", price = { input = "1000", output = "1000" } }]

[budget]
backend = "sqlite"
options = { path = "state/budget.sqlite3" }
limits = [{ scope = "global", period = "total", limit = "1" }]
"""


def test_relative_path_is_next_to_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "project"
    conf.mkdir()
    (conf / "squirrel.toml").write_text(CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dist = make_dist(tmp_path / "dist", "sq-scripted", entry_points=SCRIPTED_DIST)
    env = {k: v for k, v in os.environ.items() if k != "SQUIRREL_CONFIG"}
    env["PYTHONPATH"] = str(dist)
    squirrel = Path(sys.executable).with_name("squirrel")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(squirrel), *args, "--config", str(conf / "squirrel.toml")],
                              capture_output=True, text=True, env=env, cwd=cwd, timeout=120)

    r = run("ask", "hello there", "--no-stream", "--max-tokens", "5", cwd=conf)
    assert r.returncode == 0, r.stderr
    assert (conf / "state" / "budget.sqlite3").exists()
    spent = json.loads(run("budget", "--json", cwd=conf).stdout)[0]["committed"]
    assert float(spent) > 0
    # from another folder: the same file, the same spend (not a fresh, full budget)
    r = run("budget", "--json", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["committed"] == spent
    assert not (elsewhere / "state").exists()
