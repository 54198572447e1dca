"""A ModelManager with the PostgreSQL budget, made and used before ``os.fork()``, used in the
child on an event loop of its own while the parent goes on: each process talks to the
server on connections of its own, and every request of both is in the ledger once.

Before: the child took the parent's pooled connections (their sockets cross a fork), so the
two processes read each other's answers: the parent's reserve timed out after 15 s
("the database did not answer in time") and a connection was discarded as BAD."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import AIRequest
from squirrel_models.manager import ModelManager

from tests.support.forked import across_a_fork

from .pgserver import PgServer

URL_ENV = "SQUIRREL_TEST_PG_FORK_URL"
REQ = AIRequest.from_prompt("hi", max_tokens=10)
N = 15


@pytest.mark.parametrize("driver", ["async", "threads"])
def test_parent_and_forked_child_budget_on_their_own_connections(
        pg_server: PgServer, schema: str, squirrel_plugins: Any, monkeypatch: pytest.MonkeyPatch,
        driver: str) -> None:
    monkeypatch.setenv(URL_ENV, pg_server.url)
    cfg = {"providers": [{"name": "p", "type": "scripted",
                          "options": {"models": ["a"], "reply": "one two three"},
                          "models": [{"name": "a", "price": {"input": "1000", "output": "1000"}}]}],
           "budget": {"backend": "postgres",
                      "options": {"url_env": URL_ENV, "schema": schema, "driver": driver,
                                  "max_connections": 2},
                      "limits": [{"scope": "global", "limit": "100"}]}}
    mm = ModelManager(cfg, plugins=squirrel_plugins)
    rows, usage = across_a_fork(mm, REQ, "one two three", N, lambda run: (
        run(mm.budget_backend.rows()), run(mm.tokens.check_budget(mm.models["p/a"]))[0]))
    ok = [r for r in rows if r.outcome == "ok"]
    assert len(ok) == 2 + 2 * N and len({r.request_id for r in ok}) == len(ok)
    assert usage.reserved == 0
    assert usage.committed == sum((r.cost for r in rows), Decimal(0)) > 0
