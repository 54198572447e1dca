"""The gateway on a budget store held locked by another process (SQLite under ``BEGIN
EXCLUSIVE``, its ``busy_timeout_s`` far longer than the request's deadline): a chat completion
and a stream each end by the gateway's deadline (``timeout``) with a 504 and the OpenAI error
body, no traceback in the log and no key anywhere; once the file is free, the gateway serves
again and the budget holds (``committed + reserved <= limit``, no reservation left open).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from squirrel_models.budget import limit_charges
from squirrel_models_gateway import GatewayThread, build, hash_key

from ..support import secret_scanner
from ..support.deadline_cases import BOUND
from ..support.faulty_server import FaultyServer
from ..support.stalls import runqueue_wait
from ..support.store_locks import SqliteLocker
from .conftest import CANARY_ENV, Everything, figure

KEY = secret_scanner.canary("sqk-frozen-7c1e9a4d2b6f")
DEADLINE = 1.0
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


@pytest.fixture
def gateway(faulty_session: FaultyServer, canary_env: Any, tmp_path: Path) -> Iterator[tuple[GatewayThread, Path]]:
    db = tmp_path / "budget.sqlite3"
    config = {
        "providers": [{"name": "faulty", "type": "openai", "discover": False,
                       "options": {"base_url": faulty_session.base_url, "api_key_env": CANARY_ENV,
                                   "timeout": 5.0},
                       "models": [{"name": "ok", "context_window": 4096, "max_output_tokens": 64,
                                   "price": {"input": "1000", "output": "1000"}}]}],
        "timeout": DEADLINE,
        "budget": {"backend": "sqlite", "options": {"path": str(db), "busy_timeout_s": 30},
                   "limits": [{"scope": "key:team", "period": "day", "limit": "5"}]},
        "gateway": {"port": 0, "shutdown_timeout": 5.0,
                    "keys": [{"name": "team", "sha256": hash_key(KEY), "budget_key": "team"}]},
    }
    app, gw = build(config)
    with GatewayThread(app, gw) as thread:
        yield thread, db


def _post(base: str, stream: bool) -> tuple[int, str]:
    body = {**BODY, "stream": True} if stream else BODY
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        return r.status_code, r.read().decode()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_locked_store_ends_the_gateways_request_by_its_deadline(
        gateway: tuple[GatewayThread, Path], all_logs: Everything, stream: bool) -> None:
    thread, db = gateway
    assert _post(thread.base_url, stream)[0] == 200  # warm: the file and its rows exist
    tid = thread.thread.native_id
    with SqliteLocker(str(db)) as locker:
        anyio.run(locker.lock)
        waited0 = runqueue_wait(tid)
        t0 = time.monotonic()
        status, text = _post(thread.base_url, stream)
        wall = time.monotonic() - t0
        # time the gateway's thread waited for a CPU is not the deadline's to keep
        forgiven = runqueue_wait(tid) - waited0
        anyio.run(locker.unlock)
    figure("frozen_store_gateway", **{f"{'stream' if stream else 'complete'}_wall_s": round(wall, 3)})
    secret_scanner.collect(text, *all_logs.texts)
    assert wall - forgiven <= DEADLINE + BOUND, (wall, forgiven)
    if status == 200:  # a stream whose head went out first ends in an error event
        assert stream and "deadline" in text and "[DONE]" not in text, text
    else:
        assert status == 504, (status, text)
        assert '"code":"deadline_exceeded"' in text.replace(" ", ""), text
    assert not any("Traceback" in t for t in all_logs.texts)
    # Free again: the gateway serves, and the budget holds.
    assert _post(thread.base_url, stream)[0] == 200
    mm = thread.app.state.gateway.manager
    charges = limit_charges(mm.config.budget.limits, budget_key="team",
                            now=__import__("datetime").datetime.now(__import__("datetime").UTC))

    async def state() -> tuple[Any, dict[str, Any]]:
        (u,) = await mm.budget_backend.usage(charges)
        return u, await mm.budget_backend.audit()

    u, audit = anyio.run(state)
    assert u.committed + u.reserved <= u.limit and u.committed > 0, u
    assert audit["open"] == 0 and audit["mismatched"] == [], audit
