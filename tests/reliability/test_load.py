"""Thousands of mixed concurrent requests through ModelManager against a server that hangs,
resets, storms 429s, fails, garbles and truncates: every request ends by its deadline with an
answer or a typed error, after at most ``max_attempts`` upstream attempts; afterwards no
connection, reservation or unaccounted dollar remains, and the canary key showed nowhere."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import (
    AIRequest,
    DeadlineExceeded,
    MidStreamError,
    ModelError,
    ModelRequirements,
    SquirrelError,
)
from squirrel_models.fallback import REFUSALS
from squirrel_models_sqlite_budget import to_nanos

from ..support.faulty_server import FaultyServer
from ..support.stalls import loop_stalls, own_threads
from . import compose
from .conftest import CANARY, FIGURES, Everything, figure

pytestmark = pytest.mark.anyio

#: Requests per backend: asyncio carries the bulk, trio a share (both see every fault).
REQUESTS = {"asyncio": 2000, "trio": 800}
CONCURRENCY = 48
TIMEOUTS = (0.6, 1.0, 2.0)
#: Allowed lateness past a request's deadline (the ledger write after it, a busy loop of 48
#: tasks), beyond the time the whole event loop stood still because another process had the
#: CPU of this shared 2-core machine. Both measured maxima are in the figures.
SLACK = 0.5
#: Only a net for a run that hangs (each request has its own deadline, checked below): at
#: load 15-20 the 2,000 asyncio requests took more than the 120 s it was.
RUN_LIMIT_S = 600.0
UPSTREAM = ("ok", "error")


def upstream_attempts(outcome: Any) -> int | None:
    """Upstream attempts the client knows of, from the response or the error; None: unknown."""
    attempts = getattr(outcome, "attempts", None)
    if attempts is not None:
        return sum(a.outcome in UPSTREAM for a in attempts)
    if isinstance(outcome, REFUSALS) or not isinstance(outcome, ModelError):
        return 0  # refused before any call, or every breaker open
    return 1  # a single failed attempt is raised as itself


async def test_faults_under_load(anyio_backend: str, faulty: FaultyServer, canary_env: str, tmp_path: Path,
                                 squirrel_manager: Any, squirrel_metrics: Any, all_logs: Everything,
                                 caplog: pytest.LogCaptureFixture) -> None:
    n = REQUESTS[anyio_backend]
    rng = random.Random(20261126 + n)
    random.seed(7)  # the retry strategy's jitter
    faulty_ids, healthy_ids = compose.model_ids(compose.FAULTS), compose.model_ids(compose.HEALTHY)
    plans = []
    for i in range(n):
        ids = rng.sample(faulty_ids, rng.randint(1, 3))
        if rng.random() < 0.75:
            ids.append(rng.choice(healthy_ids))
        plans.append({"i": i, "prompt": f"request {anyio_backend}-{i}: say hello",
                      "stream": rng.random() < 0.5, "models": frozenset(ids),
                      "timeout": rng.choice(TIMEOUTS), "key": rng.choice(["a", "b", "c", "d", "e", "f", "g", "tight"])})
    results: list[dict[str, Any]] = []
    leaked: list[str] = []
    scanned = 0
    db = str(tmp_path / "budget.sqlite3")

    async with squirrel_manager(compose.config(faulty, db)) as mm:
        leaked += compose.leaks([repr(mm.providers), repr(list(mm.models.values())), repr(mm.config)])

        async def one(plan: dict[str, Any]) -> None:
            nonlocal scanned
            req = AIRequest.from_prompt(plan["prompt"], max_tokens=16, budget_key=plan["key"])
            need = ModelRequirements(models=plan["models"])
            outcome: Any = None
            t0 = time.monotonic()
            try:
                if plan["stream"]:
                    s = None
                    try:
                        async with mm.stream(req, need, timeout=plan["timeout"]) as s:
                            async for _ in s:
                                pass
                        outcome = s.response
                    except MidStreamError as exc:
                        outcome = exc
                        plan["attempts"] = upstream_attempts(s.response) if s is not None else None
                else:
                    outcome = await mm.complete(req, need, timeout=plan["timeout"])
            except SquirrelError as exc:
                outcome = exc
            except Exception as exc:  # an untyped error is a failure of the suite's invariant
                outcome = exc
            wall = time.monotonic() - t0
            if isinstance(outcome, BaseException):
                texts = compose.texts_of(outcome)
                scanned += len(texts)
                leaked.extend(compose.leaks(texts))
            results.append({**plan, "wall": wall, "t0": t0 - t_run, "outcome": outcome,
                            "attempts": plan.get("attempts", upstream_attempts(outcome))})

        todo = iter(plans)

        async def worker() -> None:
            for plan in todo:
                await one(plan)

        # When, and how long, this process was kept off the CPU. Not the loop thread's
        # run-queue wait alone (exact in tests/openai/test_load.py): here the loop also
        # stands still blocked, not runnable, on the interpreter lock held by the faulty
        # server's or the budget's threads while another process has their CPU, and waits for
        # the faulty server's thread to answer. So in every beat the heartbeat forgives the
        # most any thread of this process waited for a CPU, or, if more, the part of a late
        # beat the whole process did not spend computing (time.process_time), and, as before,
        # a beat later than 0.1 s whole (one pass of 48 tasks takes far less). With the last
        # alone, at load 14, 8 of 800 requests (trio) ended more than SLACK past their
        # deadline beyond the stalls, delayed by many shorter ones; with the first two alone,
        # 3 of 800 at load 21 (worst 0.70 s).
        t_run = time.monotonic()
        with anyio.fail_after(RUN_LIMIT_S):
            async with loop_stalls(own_threads, cpu=time.process_time, whole_after=0.1) as stalls, \
                    anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)
        run_s = time.monotonic() - t_run
        backend = mm.budget_backend
        tight = compose.Charge("key:tight", "total", "total", compose.TIGHT_LIMIT)
        state = await compose.budget_state(backend, [compose.GLOBAL, tight])  # type: ignore[arg-type]
        # A settle or release the store could not run in its short try past the deadline
        # (another call of this process held the connection: at load 17, 2 of 800 stopped
        # after 0.10 s) leaves its lease to expire, by design, and says so. Those logged are
        # all that may stay open; past their expiry, reconcile gives every one back.
        left = compose.leases_left(caplog.records)
        expired = await compose.state_after_expiry(backend, [compose.GLOBAL, tight])  # type: ignore[arg-type]

    # Connections: every one the clients opened is closed once the manager is (the wait is
    # for the server's thread to see it, not a bound: a leaked one stays open).
    with anyio.move_on_after(30):
        while faulty.open_connections:
            await anyio.sleep(0.02)

    assert len(results) == n
    untyped = [r for r in results if not isinstance(r["outcome"], SquirrelError | type(None))
               and isinstance(r["outcome"], BaseException)]
    assert not untyped, [(r["models"], repr(r["outcome"])) for r in untyped[:3]]
    assert all(r["outcome"] is not None for r in results)
    overruns = [r["wall"] - r["timeout"] for r in results]

    def stalled(r: dict[str, Any]) -> float:
        """Seconds no thread of this process ran during the request (another process had the
        CPU): lateness no code of ours can avoid."""
        return stalls.off_cpu(t_run + r["t0"], t_run + r["t0"] + r["wall"])

    unexplained = [r["wall"] - r["timeout"] - stalled(r) for r in results]
    late = [r for r, u in zip(results, unexplained, strict=True) if u > SLACK]
    # Attempts: the client's records and the server's own count per logical request.
    client_max = max(r["attempts"] or 0 for r in results)
    server_counts = [faulty.by_prompt[r["prompt"]] for r in results]
    assert client_max <= compose.MAX_ATTEMPTS
    assert max(server_counts) <= compose.MAX_ATTEMPTS
    for r, seen in zip(results, server_counts, strict=True):
        known = r["attempts"]
        if known is not None:  # an attempt cut by the deadline is not recorded
            assert seen <= known + isinstance(r["outcome"], DeadlineExceeded), (r, seen)
    # Nothing left open: connections, leases, and every dollar in the ledger.
    assert faulty.open_connections == 0
    audit = state["audit"]
    assert audit["open"] <= left and audit["mismatched"] == [], (audit, left)
    assert expired["audit"]["open"] == 0 and expired["audit"]["mismatched"] == [], expired["audit"]
    assert expired["rows"] == state["rows"]  # expiry releases; it charges nothing
    g, t = expired["usage"]["global"], expired["usage"]["key:tight"]
    assert g.reserved == 0 and t.reserved == 0
    if not left:
        assert (state["usage"]["global"].reserved, state["usage"]["key:tight"].reserved) == (0, 0)
    assert to_nanos(g.committed) == state["ledger_nanos"]
    assert g.committed <= g.limit and t.committed <= t.limit
    assert state["unknown_cost_rows"] == 0
    # The canary: sent on every request, shown nowhere.
    assert all(h.get("authorization") == f"Bearer {CANARY}" for h in faulty.headers_seen)
    texts = [r.getMessage() for r in caplog.records] + all_logs.texts + [squirrel_metrics.everything()]
    leaked += compose.leaks(texts)
    scanned += len(texts)
    assert not leaked, leaked[:1]

    kinds = Counter(type(r["outcome"]).__name__ for r in results)
    faults = [b for b in faulty.behaviours if b not in ("ok", "no-usage")]
    figure("load", requests=n, **{f"requests_{anyio_backend}": n},
           streams=sum(r["stream"] for r in results), answered=kinds.pop("AIResponse", 0),
           upstream_requests=faulty.requests, faults_injected=len(faults),
           max_client_attempts=client_max, max_server_attempts=max(server_counts),
           max_attempts_configured=compose.MAX_ATTEMPTS,
           max_overrun_s=round(max(overruns), 3), max_overrun_beyond_loop_stalls_s=round(max(unexplained), 3),
           max_loop_stall_s=round(max((d for _, d in stalls.spans), default=0.0), 3),
           max_allowed_overrun_beyond_stalls_s=SLACK,
           max_open_connections=faulty.max_open_connections, open_connections_after=faulty.open_connections,
           open_reservations_after=audit["open"], reserved_after_usd=str(g.reserved + t.reserved),
           ledger_rows=len(state["rows"]), **{f"run_s_{anyio_backend}": round(run_s, 1)},
           committed_equals_ledger=to_nanos(g.committed) == state["ledger_nanos"],
           tight_key_committed_usd=str(t.committed), tight_key_limit_usd=str(t.limit),
           canary_texts_scanned=scanned, canary_leaks=len(leaked))
    errors = FIGURES["load"].setdefault("errors", {})
    for k, v in kinds.items():
        errors[k] = errors.get(k, 0) + v
    logging.getLogger(__name__).info("load %s: %d requests in %.1fs, %s", anyio_backend, n, run_s, dict(kinds))
    # Every await after a deadline is bounded (cleanup gets CLEANUP_GRACE, then store calls
    # go on in the background and a stream's close is cut): no request ends later than this.
    assert not late, (f"{len(late)} of {n} requests ended more than {SLACK} s past their deadline "
                      f"(worst {max(unexplained):.3f} s beyond loop stalls); first: "
                      f"{[(sorted(r['models']), r['timeout'], round(r['wall'], 3)) for r in late[:3]]}")
