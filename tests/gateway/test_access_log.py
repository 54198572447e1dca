"""``[gateway] access_log = true`` on the real ``squirrel serve``: a line per request, and never
a key a client put in the URL (``?api_key=``, ``?key=``, the path itself) or the method, nor in
the gateway's answers; whether or not ``-v`` was given (without it the lines went nowhere)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from squirrel_models.testing.fake_server import FakeServer

from ..support import secret_scanner
from ..support.serve import squirrel_serve
from .conftest import TEAM_KEY, UPSTREAM_ENV, UPSTREAM_KEY, faulty_config, gateway

#: a key the gateway does not know (a client's real OpenAI key, say): it cannot be redacted
#: by value, only by never showing where it was put
STRANGER_KEY = secret_scanner.canary("sk-proj-7Qe2Lx9Vb4Nc1Zt8Wm3K")
HI = [{"role": "user", "content": "Hi"}]


def _config(tmp_path: Path, upstream: str) -> Path:
    path = tmp_path / "squirrel.toml"
    path.write_text(f"""
timeout = 3.0
[[providers]]
name = "up"
type = "openai"
discover = false
options = {{ base_url = "{upstream}", api_key_env = "{UPSTREAM_ENV}" }}
models = [{{ name = "ok", context_window = 4096, max_output_tokens = 64, price = {{ input = "1", output = "1" }} }}]
[gateway]
port = 0
access_log = true
keys = [{{ name = "team", key_env = "SQUIRREL_TEST_ACCESS_KEY" }}]
""")
    return path


def _requests(base: str) -> list[httpx.Response]:
    """Keys where a client may put them: query strings, the path, the method, the model."""
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    out = []
    with httpx.Client(timeout=10) as client:
        for key in (TEAM_KEY, STRANGER_KEY):
            for query in (f"api_key={key}", f"key={key}", f"{key}", f"x=1&token={key}"):
                out.append(client.get(f"{base}/v1/models?{query}", headers=auth))
                out.append(client.post(f"{base}/v1/chat/completions?{query}", headers=auth,
                                       json={"model": "up/ok", "messages": HI, "max_tokens": 4}))
                out.append(client.get(f"{base}/v1/models?{query}"))  # no key header: 401
            out.append(client.get(f"{base}/v1/{key}/models", headers=auth))  # 404
            out.append(client.get(f"{base}/v1/models/{key}", headers=auth))  # 404, not echoed
            out.append(client.get(f"{base}/{key}"))
            out.append(client.request(key.upper().replace("-", ""), f"{base}/v1/models", headers=auth))
        # the gateway's own key (key_env: registered as a secret) sent as a model name
        out.append(client.post(f"{base}/v1/chat/completions", headers=auth,
                               json={"model": TEAM_KEY, "messages": HI}))
    return out


@pytest.mark.parametrize("verbose", [[], ["-vv"]], ids=["quiet", "debug"])
def test_squirrel_serve_access_log_never_shows_a_key_from_the_url(
        tmp_path: Path, verbose: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # this test's client logs the URLs it sends
    with FakeServer(("ok",)) as upstream:
        config = _config(tmp_path, upstream.base_url)
        env = {**os.environ, UPSTREAM_ENV: UPSTREAM_KEY, "SQUIRREL_TEST_ACCESS_KEY": TEAM_KEY}
        with squirrel_serve(config, env, *verbose) as served:
            answers = _requests(served.base)
        texts = [t for r in answers for t in (r.text, r.reason_phrase, *r.headers.values())]
    out = served.out
    texts.append(out)
    secret_scanner.collect(*texts)
    leaked = secret_scanner.leaky(texts[:-1]) + secret_scanner.leaky([out])
    assert not leaked, leaked[:3]
    statuses = sorted({r.status_code for r in answers})
    assert {200, 401, 404} <= set(statuses), statuses
    lines = [line for line in out.splitlines() if '" 200' in line and "HTTP/1.1" in line]
    # every request the app saw has its line (uvicorn itself refuses a method it does not
    # know, with a 400), the query string masked and unknown paths not shown
    seen_by_app = [r for r in answers if r.status_code != 400]
    assert sum(" HTTP/1.1\" " in line for line in out.splitlines()) >= len(seen_by_app), out[-3000:]
    assert any("GET /v1/models?*** HTTP/1.1" in line for line in lines), out[-3000:]
    assert "(unknown path)" in out
    assert "GET /v1/models/{model} HTTP/1.1\" 404" in out, out[-3000:]
    assert served.proc.returncode == 0, out[-500:]


def test_an_unknown_path_is_a_json_404_that_does_not_echo_it(faulty_gw: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # this test's client logs the URL it sends
    r = httpx.get(faulty_gw.base_url + f"/{STRANGER_KEY}", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert secret_scanner.leaky([r.text]) == []
    assert "/v1/chat/completions" in r.json()["error"]["message"]


def test_a_handler_added_to_uvicorns_access_logger_gets_no_raw_query(
        faulty_gw: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A logging configuration that gives ``uvicorn.access`` a handler after start-up (a
    ``dictConfig`` naming it; pytest's log capture does it too) made uvicorn write its own
    access line again, raw query string and path included, although access_log was off."""
    caplog.set_level(logging.WARNING, logger="httpx")  # this test's client logs the URLs it sends
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    handler = Keep(logging.DEBUG)
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        with httpx.Client(timeout=10) as client:
            client.get(f"{faulty_gw.base_url}/models?api_key={STRANGER_KEY}")
            client.get(f"{faulty_gw.base_url}/{STRANGER_KEY}")
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert secret_scanner.leaky(records) == [], records


@pytest.mark.parametrize("access_log", [True, False], ids=["access-log", "no-access-log"])
def test_the_access_log_shows_the_client_a_local_proxy_forwards(
        faulty: Any, access_log: bool, caplog: pytest.LogCaptureFixture) -> None:
    """With the access log on, a request from 127.0.0.1 (uvicorn's default trusted proxy)
    that says ``X-Forwarded-For`` is logged with the client it names, as before; without the
    log, which is all that reads the client's address, uvicorn does not read the header."""
    caplog.set_level(logging.INFO, logger="squirrel_models.gateway.access")
    with gateway(faulty_config(faulty, access_log=access_log)) as gw:
        assert gw.server.config.proxy_headers is access_log
        r = httpx.post(gw.base_url + "/chat/completions", timeout=10,
                       headers={"Authorization": f"Bearer {TEAM_KEY}", "X-Forwarded-For": "203.0.113.7"},
                       json={"model": "faulty/ok", "messages": HI, "max_tokens": 4})
    assert r.status_code == 200, r.text
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "squirrel_models.gateway.access"]
    if access_log:
        assert any(line.startswith("203.0.113.7:") and "POST /v1/chat/completions" in line
                   for line in lines), lines
    else:
        assert lines == []
