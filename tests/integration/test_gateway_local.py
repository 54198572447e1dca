"""The gateway over the embedded default composition (llama-local serving SmolLM2, the durable
SQLite budget): ``squirrel serve`` as a real process, the OpenAI wire format in and out, and
the ledger rows the requests leave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from squirrel_models_gateway import hash_key

from ..support import secret_scanner
from ..support.serve import squirrel_serve

#: the virtual key: a canary, so the secret scanner reads this session's output for it too
KEY = secret_scanner.canary("sqk-2b7e9d4c1a6f8e30b5d2")
MODEL = "local/SmolLM2-135M-Instruct.Q4_1"


def test_squirrel_serve_over_the_default_composition(tmp_path: Path) -> None:
    cfg = tmp_path / "squirrel.toml"
    cfg.write_text(f"""
[[providers]]
name = "local"
type = "llama-local"

[budget]
backend = "sqlite"
options = {{ path = "budget.sqlite3" }}

[[budget.limits]]
scope = "key:team"
period = "day"
limit = "1.00"

[gateway]
port = 0

[[gateway.keys]]
name = "team"
sha256 = "{hash_key(KEY)}"
""")
    env = {**os.environ, "SQUIRREL_DATA_DIR": str(tmp_path)}
    squirrel = Path(sys.executable).parent / "squirrel"
    # SIGTERM on exit: the graceful shutdown
    with squirrel_serve(cfg, env, timeout=120, stop=signal.SIGTERM) as served:
        base = served.base
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "auto", "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8}
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL and r.headers["x-squirrel-cost"] == "0"
        with httpx.stream("POST", base + "/v1/chat/completions", headers=auth, timeout=60,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] > 0
    proc, out = served.proc, served.out
    # uvicorn re-raises the signal once it has shut down gracefully: -SIGTERM, no traceback
    assert proc.returncode in (0, -15), out
    assert "Traceback" not in out
    assert secret_scanner.leaky([out, r.text, *events]) == []
    # the ledger the gateway's requests left, read back with the CLI
    usage = subprocess.run([str(squirrel), "usage", "--config", str(cfg), "--json"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0, usage.stderr
    assert MODEL in usage.stdout
    assert secret_scanner.leaky([usage.stdout, usage.stderr]) == []


def test_squirrel_serve_with_no_file_says_none_was_found(tmp_path: Path) -> None:
    """With no --config, no $SQUIRREL_CONFIG and no ./squirrel.toml, serve runs the embedded
    default, which has no [gateway] keys: the error said only "gateway.keys: no virtual keys",
    as if a file had a mistake. It now says no file was found, and where it looked."""
    env = {k: v for k, v in os.environ.items() if k != "SQUIRREL_CONFIG"}
    env["SQUIRREL_DATA_DIR"] = str(tmp_path / "data")
    squirrel = Path(sys.executable).parent / "squirrel"
    out = subprocess.run([str(squirrel), "serve", "--port", "0"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "gateway.keys: no virtual keys" in out.stderr
    assert "no configuration file was found" in out.stderr
    assert f"--config FILE, $SQUIRREL_CONFIG and {tmp_path.resolve() / 'squirrel.toml'}" in out.stderr
    assert "the embedded default is in use" in out.stderr
    # a file's own mistake is not blamed on a missing file
    (tmp_path / "squirrel.toml").write_text("[gateway]\nport = 0\n")
    out = subprocess.run([str(squirrel), "serve"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "gateway.keys: no virtual keys" in out.stderr, out.stderr
    assert "no configuration file was found" not in out.stderr
