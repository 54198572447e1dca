"""Fixtures of the gateway's tests: the real llama.cpp server and the faulty server as
upstreams (through the openai plugin), canary keys that must never leak, and gateways served
by uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models.budget import limit_charges
from squirrel_models_gateway import GatewayThread, build, hash_key

from ..support import secret_scanner
from ..support.canary import canary_env_fixture
from ..support.faulty_server import FaultyServer, faulty_fixtures
from ..support.httpx_generators import ignore_unclosed_httpx_generators
from ..support.llama_server import LlamaServer, llama_server_fixture
from ..support.models import smollm2_path

LLAMA_KEY = "sk-llama-test-key-4f1c"
#: The key the openai plugin sends to the faulty server (the gateway's upstream credential).
UPSTREAM_KEY = secret_scanner.canary("sk-5b8d2f7e1a9c4e03d6a7")
UPSTREAM_ENV = "SQUIRREL_TEST_GATEWAY_UPSTREAM"
#: Virtual keys the clients present to the gateway (canaries too: never in any output).
TEAM_KEY = secret_scanner.canary("sqk-1f6e2d9c8b7a4e50c3b9")
OTHER_KEY = secret_scanner.canary("sqk-93ac4d1e7f20b6a8e5d1")
REVOKED_KEY = secret_scanner.canary("sqk-0d4f8e2a6c1b3957f2a4")
ENV_KEY = secret_scanner.canary("sqk-6e1a9f3c2d7b8054a9c6")
ENV_KEY_VAR = "SQUIRREL_TEST_GATEWAY_ENV_KEY"

llama_server = llama_server_fixture(smollm2_path, alias="smollm2", api_key=LLAMA_KEY)
faulty_session, faulty = faulty_fixtures(models=("ok",))
canary_env = canary_env_fixture(UPSTREAM_ENV, UPSTREAM_KEY, SQUIRREL_TEST_LLAMA_KEY=LLAMA_KEY,
                                **{ENV_KEY_VAR: ENV_KEY})

#: Faulty-server models by behaviour, each priced so budgets apply (USD per million tokens).
FAULTY_MODELS = ("ok", "tool-call", "error:500", "hang", "trickle:0.05", "rate-limit:1", "context",
                 "leak:message.whole", "slow:0.2")
PRICE = {"input": "1000", "output": "1000"}  # $0.001 a token: a request costs cents


def keys() -> list[dict[str, Any]]:
    return [
        {"name": "team-a", "sha256": hash_key(TEAM_KEY), "budget_key": "team-a"},
        {"name": "team-b", "sha256": hash_key(OTHER_KEY), "models": ["faulty/ok", "cheap"]},
        {"name": "gone", "sha256": hash_key(REVOKED_KEY), "revoked": True},
    ]


def faulty_config(faulty: FaultyServer, **gateway: Any) -> dict[str, Any]:
    gw: dict[str, Any] = {"port": 0, "keys": keys(), "aliases": {"cheap": "faulty/ok"},
                          "shutdown_timeout": 5.0}
    gw.update(gateway)
    return {
        "providers": [{"name": "faulty", "type": "openai", "discover": False,
                       "options": {"base_url": faulty.base_url, "api_key_env": UPSTREAM_ENV,
                                   "timeout": 5.0, "stream_usage": True},
                       # only "ok" sees images and answers in JSON mode
                       "models": [{"name": m, "context_window": 4096, "max_output_tokens": 64,
                                   "price": PRICE,
                                   "features": ["tools", "streaming"] + (["json_mode"] if m == "ok" else []),
                                   "capabilities": ["chat"] + (["vision"] if m == "ok" else [])}
                                  for m in FAULTY_MODELS]}],
        "fallback": {"max_attempts": 1},
        "timeout": 3.0,
        "budget": {"limits": [{"scope": "key:team-a", "period": "day", "limit": "5"}]},
        "gateway": gw,
    }


def llama_config(server: LlamaServer, **gateway: Any) -> dict[str, Any]:
    gw: dict[str, Any] = {"port": 0, "keys": keys()[:1], "aliases": {"small": "llama/smollm2"}}
    gw.update(gateway)
    return {
        "providers": [{"name": "llama", "type": "openai", "discover": False,
                       "options": {"base_url": server.base_url, "api_key_env": "SQUIRREL_TEST_LLAMA_KEY",
                                   "timeout": 60.0},
                       "models": [{"name": "smollm2", "context_window": 2048, "max_output_tokens": 64,
                                   "price": {"input": "0", "output": "0"}}]}],
        "timeout": 60.0,
        "gateway": gw,
    }


@contextlib.contextmanager
def gateway(config: dict[str, Any]) -> Iterator[GatewayThread]:
    """The gateway of ``config`` served by uvicorn on 127.0.0.1 (a free port), stopped
    gracefully on exit."""
    app, gw = build(config)
    with GatewayThread(app, gw) as thread:
        yield thread


def budget_state(thread: GatewayThread, budget_key: str) -> tuple[Decimal, Decimal, int]:
    """(committed, reserved, open reservations) of ``budget_key``'s day limit."""
    mm = thread.app.state.gateway.manager
    charges = limit_charges(mm.config.budget.limits, budget_key=budget_key,
                            now=__import__("datetime").datetime.now(__import__("datetime").UTC))
    open_ = mm.budget_backend.open_reservations  # read first: the usage below may then be newer
    (u,) = [u for u in anyio.run(mm.budget_backend.usage, charges) if u.scope == f"key:{budget_key}"]
    return u.committed, u.reserved, open_


def request_head(port: int, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    """The head of a raw POST to the chat endpoint with the team's key, for tests that hold the socket."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + TEAM_KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body) if length is None else length).encode() + b"\r\n" + extra + b"\r\n")


@pytest.fixture(scope="module")
def faulty_gw(faulty_session: FaultyServer) -> Iterator[GatewayThread]:
    """One gateway over the faulty server for a whole test module (starting one costs seconds:
    the openai plugin loads its catalogue and tokenizers)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
        with gateway(faulty_config(faulty_session)) as thread:
            yield thread


@pytest.fixture
def openai_module() -> Any:
    return pytest.importorskip("openai")


#: The official SDK's async stream leaves its own event generators to the garbage collector
#: even when the stream is exhausted and closed (``AsyncStream.close`` closes the response
#: only); trio warns when it collects them. Not ours to close: ignored like httpx's.
SDK_GENERATORS = "Async generator 'openai\\._streaming\\..*was garbage collected"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ignore_unclosed_httpx_generators(items, __file__)
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(f"ignore:{SDK_GENERATORS}:ResourceWarning"))
