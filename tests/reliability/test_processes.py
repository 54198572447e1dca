"""The sqlite budget under several processes, one SIGKILLed at a random moment: after
recovery (lease expiry), committed spend equals what the ledger's settled attempts say, exactly
(each settlement writes its ledger row in its own transaction), and the limit was never
exceeded."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions, from_nanos, to_nanos

from tests.support.together import Together

from . import workers
from .conftest import figure

PROCESSES = 3  # survivors, plus one victim
REQUESTS = 150
TASKS = 4
ROUNDS = 2


@pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])
def test_sigkill_during_spend_then_recovery(tmp_path: Path, slices: bool) -> None:
    """With slices, the victim's slices are charged in full when their leases expire (a
    ledger row each), so committed still equals the ledger, and stays within the limit."""
    rng = random.Random(99)
    ctx = multiprocessing.get_context("spawn")
    totals: dict[str, Any] = {"ok": 0, "errors": 0, "killed_at_s": [], "gap_nanos": [], "expired": [],
                              "rows": 0, "committed_usd": []}
    charge = Charge("global", "total", "total", workers.LIMIT)
    for rnd in range(ROUNDS):
        path = str(tmp_path / f"budget-{rnd}.sqlite3")
        # all start once every child has imported and opened the file
        together = Together(ctx, PROCESSES + 1)
        ready = ctx.Event()
        victim = ctx.Process(target=workers.spend,
                             args=(path, 100 + rnd, 10_000, TASKS, together.handles(), ready, slices))
        with ProcessPoolExecutor(PROCESSES, mp_context=ctx, **together.pool_options()) as pool:
            futures = [pool.submit(workers.spend, path, seed + 10 * rnd, REQUESTS, TASKS, None,
                                   None, slices)
                       for seed in range(PROCESSES)]
            victim.start()
            together.go(futures, [victim])
            kill_at = rng.uniform(0.0, 0.8)
            assert ready.wait(60), "the victim never answered a request"
            time.sleep(kill_at)
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join(10)
            results = [f.result(timeout=90) for f in futures]
        assert victim.exitcode == -signal.SIGKILL
        assert [v for r in results for v in r["violations"]] == []
        totals["ok"] += sum(r["ok"] for r in results)
        totals["errors"] += sum(r["errors"] for r in results)
        totals["killed_at_s"].append(round(kill_at, 3))

        async def recover(path: str = path) -> dict[str, int]:
            later = time.time() + workers.TTL + 1
            backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path), clock=lambda later=later: later)
            expired = await backend.reconcile()  # what ModelManager.start() does
            (u,) = await backend.usage([charge])
            rows = await backend.rows()
            audit = await backend.audit()
            await backend.aclose()
            ledger = sum(to_nanos(r.cost) for r in rows if r.cost is not None)
            committed = to_nanos(u.committed)
            assert u.reserved == 0 and audit["open"] == 0 and audit["mismatched"] == []
            assert committed <= to_nanos(u.limit)
            # A settlement and its ledger row are one transaction: whenever the victim died,
            # every committed nano-dollar has its row, and no row claims money not committed.
            assert committed == ledger, (committed, ledger)
            settled = [(r.request_id, r.attempt) for r in rows if r.cost]
            assert len(settled) == len(set(settled))  # no row written twice
            return {"expired": expired, "gap": committed - ledger, "committed": committed,
                    "rows": len(rows)}

        got = anyio.run(recover)
        totals["gap_nanos"].append(got["gap"])
        totals["expired"].append(got["expired"])
        totals["rows"] += got["rows"]
        totals["committed_usd"].append(str(from_nanos(got["committed"])))
    figure("processes-slices" if slices else "processes", rounds=ROUNDS,
           processes_per_round=PROCESSES + 1, sigkilled=ROUNDS,
           survivor_requests=totals["ok"] + totals["errors"], killed_at_s=totals["killed_at_s"],
           leases_expired_after_kill=totals["expired"], ledger_rows=totals["rows"],
           committed_usd=totals["committed_usd"], limit_usd=str(workers.LIMIT), limit_exceeded=0,
           committed_minus_ledger_nanos=totals["gap_nanos"])
