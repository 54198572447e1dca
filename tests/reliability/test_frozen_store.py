"""The gateway on a budget store that does not answer: a SQLite file held locked by another
process (``BEGIN EXCLUSIVE``), Redis SIGSTOPped, PostgreSQL SIGSTOPped whole (its postmaster
and backends), each with its own timeouts far longer than the request's deadline. A chat
completion and a stream each end by the gateway's deadline (``timeout``) with a 504 and the
OpenAI error body (or, for a stream whose head went out, an error event), no traceback in the
log and no key or password anywhere; once the store answers again, the gateway serves and the
budget holds (``committed + reserved <= limit``, no reservation left open)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from squirrel_models import ModelManager
from squirrel_models.budget import limit_charges
from squirrel_models_gateway import GatewayThread, build, hash_key

from ..support import secret_scanner
from ..support.deadline_cases import BOUND
from ..support.faulty_server import FaultyServer
from ..support.stalls import runqueue_wait
from ..support.store_locks import Freeze, SqliteLocker
from .conftest import CANARY_ENV, Everything, figure

KEY = secret_scanner.canary("sqk-frozen-7c1e9a4d2b6f")
DEADLINE = 1.0
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
URL_ENV = "SQUIRREL_TEST_FROZEN_STORE_URL"


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[dict[str, Any], Any]]:
    """(the [budget] table's backend and options, what holds the store on ``lock``)."""
    if request.param == "sqlite":
        db = tmp_path / "budget.sqlite3"
        with SqliteLocker(str(db)) as locker:
            yield {"backend": "sqlite", "options": {"path": str(db), "busy_timeout_s": 30}}, locker
        return
    if request.param == "redis":
        from ..redis.redisserver import PASSWORD, RedisServer, find_server

        binary = find_server()
        if binary is None:
            pytest.skip("no redis-server on this machine")
        server: Any = RedisServer(binary)
        options = {"url_env": URL_ENV, "connect_timeout_s": 30, "operation_timeout_s": 30}
    else:
        from ..postgres_budget.pgserver import PASSWORD, PgServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server programs on this machine")
        server = PgServer.create(bindir)
        options = {"url_env": URL_ENV, "connect_timeout_s": 30, "operation_timeout_s": 30,
                   "startup_timeout_s": 30}
    secret_scanner.canary(PASSWORD)
    server.start()
    monkeypatch.setenv(URL_ENV, server.url)
    try:
        yield {"backend": request.param, "options": options}, Freeze(server)
    finally:
        server.remove()


@pytest.fixture
def gateway(faulty_session: FaultyServer, canary_env: Any, store: tuple[dict[str, Any], Any]
            ) -> Iterator[GatewayThread]:
    config = {
        "providers": [{"name": "faulty", "type": "openai", "discover": False,
                       "options": {"base_url": faulty_session.base_url, "api_key_env": CANARY_ENV,
                                   "timeout": 5.0},
                       "models": [{"name": "ok", "context_window": 4096, "max_output_tokens": 64,
                                   "price": {"input": "1000", "output": "1000"}}]}],
        "timeout": DEADLINE,
        "budget": {**store[0], "limits": [{"scope": "key:team", "period": "day", "limit": "5"}]},
        "gateway": {"port": 0, "shutdown_timeout": 5.0,
                    "keys": [{"name": "team", "sha256": hash_key(KEY), "budget_key": "team"}]},
    }
    app, gw = build(config)
    with GatewayThread(app, gw) as thread:
        yield thread


def _post(base: str, stream: bool) -> tuple[int, str]:
    body = {**BODY, "stream": True} if stream else BODY
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        return r.status_code, r.read().decode()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_store_that_does_not_answer_ends_the_gateways_request_by_its_deadline(
        gateway: GatewayThread, store: tuple[dict[str, Any], Any], all_logs: Everything,
        stream: bool) -> None:
    locker = store[1]
    assert _post(gateway.base_url, stream)[0] == 200  # warm: the store and its rows exist
    tid = gateway.thread.native_id
    anyio.run(locker.lock)
    try:
        waited0 = runqueue_wait(tid)
        t0 = time.monotonic()
        status, text = _post(gateway.base_url, stream)
        wall = time.monotonic() - t0
        # time the gateway's thread waited for a CPU is not the deadline's to keep
        forgiven = runqueue_wait(tid) - waited0
    finally:
        anyio.run(locker.unlock)
    kind = f"{store[0]['backend']}_{'stream' if stream else 'complete'}"
    figure("frozen_store_gateway", **{f"{kind}_wall_s": round(wall, 3)})
    secret_scanner.collect(text, *all_logs.texts)
    assert wall - forgiven <= DEADLINE + BOUND, (wall, forgiven)
    if status == 200:  # a stream whose head went out first ends in an error event
        assert stream and "deadline" in text and "[DONE]" not in text, text
    else:
        assert status == 504, (status, text)
        assert '"code":"deadline_exceeded"' in text.replace(" ", ""), text
    assert not any("Traceback" in t for t in all_logs.texts)
    # Answering again: the gateway serves, and the budget holds.
    assert _post(gateway.base_url, stream)[0] == 200
    mm = gateway.app.state.gateway.manager
    charges = limit_charges(mm.config.budget.limits, budget_key="team",
                            now=datetime.datetime.now(datetime.UTC))

    async def state() -> tuple[Any, dict[str, Any]]:
        # a manager of this loop's own on the same store (the gateway's clients live in its)
        async with ModelManager(mm.config) as reader:
            (u,) = await reader.budget_backend.usage(charges)
            return u, await reader.budget_backend.audit()

    u, audit = anyio.run(state)
    assert u.committed + u.reserved <= u.limit and u.committed > 0, u
    assert audit["open"] == 0 and audit["mismatched"] == [], audit
