"""No secret leaves the gateway: an upstream that echoes the gateway's upstream key (whole, in
fragments, escaped; in messages, error types, codes, headers, reason phrases, stream events)
never gets it into a response body, a header or a server-sent event, and the virtual keys the
clients present never show either. The scanner (tests/support/secret_scanner.py) reads every
text collected here and everything the tests print and log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from squirrel_models_gateway import GatewayThread

from ..support import secret_scanner
from ..support.faulty_server import FaultyServer, leak_behaviours
from .conftest import PRICE, TEAM_KEY, UPSTREAM_ENV, UPSTREAM_KEY, faulty_config, gateway

LEAKS = leak_behaviours()


@pytest.fixture(scope="module")
def leaky_gw(faulty_session: FaultyServer) -> Iterator[GatewayThread]:
    cfg = faulty_config(faulty_session)
    cfg["providers"][0]["models"] = [{"name": b, "price": PRICE, "context_window": 4096, "max_output_tokens": 64}
                                     for b in LEAKS]
    cfg["gateway"]["aliases"] = {}
    cfg["gateway"]["keys"] = cfg["gateway"]["keys"][:1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
        with gateway(cfg) as thread:
            yield thread


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("behaviour", LEAKS)
def test_upstream_key_never_leaves_the_gateway(leaky_gw: GatewayThread, behaviour: str, stream: bool) -> None:
    body: dict[str, Any] = {"model": f"faulty/{behaviour}", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 16, "stream": stream}
    r = httpx.post(leaky_gw.base_url + "/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {TEAM_KEY}"}, timeout=30)
    shown = [r.text, *(f"{k}: {v}" for k, v in r.headers.items()), r.reason_phrase]
    secret_scanner.collect(*shown)
    assert not any(secret_scanner.find(t) for t in shown), secret_scanner.mask(" | ".join(shown))
    if stream and r.status_code == 200:
        assert "data: " in r.text
    else:
        assert r.status_code >= 400 and r.json()["error"]["message"]
