"""Real processes sharing one database file: no overspend, no leaks, recovery after SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import time
from decimal import Decimal
from functools import partial
from pathlib import Path

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models_sqlite_budget import to_nanos

from tests.support import budget_workers as bw
from tests.support.together import Together

from . import workers

PROCESSES = 4
PER_PROCESS = 120
KILL_ROUNDS = 4


SLICES = pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])


@SLICES
def test_processes_never_overspend_and_leak_nothing(tmp_path: Path, slices: bool) -> None:
    path = str(tmp_path / "budget.sqlite3")
    results = bw.hammer_in_processes(partial(workers.backend, path, busy_timeout_s=60, slices=slices),
                                     PROCESSES, PER_PROCESS, timeout=60)
    bw.assert_never_overspent_and_nothing_leaked(partial(workers.backend, path), results,
                                                 PROCESSES * PER_PROCESS)


def test_sigkilled_process_leases_expire_and_spend_survives(tmp_path: Path) -> None:
    make = partial(workers.backend, str(tmp_path / "budget.sqlite3"))
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_leases_expire_and_spend_survives(make)


def test_sigkilled_process_slices_are_charged_in_full_after_expiry(tmp_path: Path) -> None:
    """With slices, a killed process's slice stays held until its lease expires, and is then
    charged in full with a ledger row naming it: room lost for a while, never money."""
    make = partial(workers.backend, str(tmp_path / "budget.sqlite3"), slices=True)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_slices_charged_in_full(make)


def test_a_stalled_process_gives_back_the_room_its_slice_never_used(tmp_path: Path) -> None:
    """Stopped past its lease, woken: the room it never used comes back (it stayed charged
    until the period ended); see the helper."""
    path = str(tmp_path / "budget.sqlite3")
    print("stalled slice:", bw.assert_a_stalled_slice_gives_its_room_back(
        partial(workers.backend, path, **bw.STALL_OPTIONS), partial(workers.backend, path),
        settled=partial(write_lock_free, path), restop=True,
        store_view=lambda: f"write lock free: {write_lock_free(path)}"))


def write_lock_free(path: str) -> bool:
    """Whether no process holds the file's write lock (this one's own writes end within the
    0.2 s waited for it; a stopped process's never does)."""
    conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    finally:
        conn.close()


def test_dead_process_lease_is_reclaimed_lazily_by_reserve(tmp_path: Path) -> None:
    """No reconcile call: a reserve that needs the headroom expires the stale leases itself."""
    path = str(tmp_path / "budget.sqlite3")
    bw.sigkill_when_ready(bw.hold, (partial(workers.backend, path), 10, 0))

    async def reclaim() -> None:
        later = time.time() + 31
        backend = workers.backend(path, clock=lambda: later)
        r = await backend.reserve([bw.HELD], Decimal("1.00"), ttl=30)
        await backend.release(r)
        assert (await backend.audit())["open"] == 0
        await backend.aclose()

    anyio.run(reclaim)


@SLICES
def test_sigkill_while_settling_leaves_no_spend_without_its_ledger_row(tmp_path: Path, slices: bool
                                                                       ) -> None:
    """Processes spending through ModelManager, SIGKILLed at random moments (most of their time
    is spent inside budget transactions): a settlement and its ledger row are one transaction,
    so after recovery committed spend equals the sum of the ledger's costs, to the nano-dollar,
    and no row is written twice."""
    path = str(tmp_path / "budget.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(2026)
    for rnd in range(KILL_ROUNDS):
        readies = [ctx.Event() for _ in range(2)]
        children = [ctx.Process(target=workers.spend_until_killed,
                                args=(path, 10 * rnd + i, 3, ready, slices))
                    for i, ready in enumerate(readies)]
        for child in children:
            child.start()
        try:
            for ready in readies:
                assert ready.wait(60), "a child never finished a request"
            for child in children:
                time.sleep(rng.uniform(0.0, 0.4))
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        finally:
            for child in children:
                if child.is_alive():
                    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
                child.join(10)
        assert [c.exitcode for c in children] == [-signal.SIGKILL] * 2

    c = Charge("global", "total", "total", Decimal("1000"))

    async def recover() -> None:
        later = time.time() + workers.KILLED_TTL + 1
        backend = workers.backend(path, clock=lambda: later)
        await backend.reconcile()  # what ModelManager.start() does
        (u,) = await backend.usage([c])
        rows = await backend.rows()
        audit = await backend.audit()
        await backend.aclose()
        assert u.reserved == 0 and audit["open"] == 0 and audit["mismatched"] == []
        assert u.committed > 0 and rows
        assert to_nanos(u.committed) == sum(to_nanos(r.cost) for r in rows if r.cost is not None)
        keys = [(r.request_id, r.attempt) for r in rows]
        assert len(keys) == len(set(keys))

    anyio.run(recover)


STREAM_PROCESSES = 4
STREAM_SECONDS = 3.0


@SLICES
def test_streams_in_processes_never_overspend(tmp_path: Path, slices: bool) -> None:
    """Processes on one file, streams in the mix (read to the end, left by ``break``,
    cancelled, broken mid-way; the upstream sends no usage on streams, so the library counts
    what was received): ``committed + reserved <= limit`` in every sample the parent takes
    while they run, and nothing is left reserved or unaccounted after."""
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor

    path = str(tmp_path / "budget.sqlite3")
    limit = to_nanos(workers.STREAM_LIMIT)

    async def create() -> None:
        backend = workers.backend(path)
        await backend.open()
        await backend.aclose()

    anyio.run(create)
    ctx = multiprocessing.get_context("spawn")
    together = Together(ctx, STREAM_PROCESSES)  # they start once all have started their managers
    samples, violations, worst = 0, [], 0
    with ProcessPoolExecutor(STREAM_PROCESSES, mp_context=ctx, **together.pool_options()) as pool:
        futures = [pool.submit(workers.stream_spend, path, seed, STREAM_SECONDS, 4, slices)
                   for seed in range(STREAM_PROCESSES)]
        together.go(futures)
        conn = sqlite3.connect(path, timeout=30)
        try:
            while not all(f.done() for f in futures):
                row = conn.execute("SELECT committed, reserved FROM buckets "
                                   "WHERE scope = 'global'").fetchone()
                if row is not None:
                    samples += 1
                    worst = max(worst, row[0] + row[1])
                    if row[0] + row[1] > limit:
                        violations.append(row)
                time.sleep(0.002)
        finally:
            conn.close()
        results = [f.result(timeout=60) for f in futures]
    assert violations == [], f"{len(violations)} of {samples} samples over the limit {limit}: {violations[:5]}"
    assert samples >= 100
    kinds = {k for r in results for k in r["kinds"]}
    assert kinds == {"complete", "stream", "break", "cancel", "broken"}
    assert sum(r["refused"] for r in results) > 0, results  # the budget really ran out

    bw.assert_stream_spend_accounted(partial(workers.backend, path), workers.STREAM_LIMIT)
    print(f"stream processes: {samples} samples, worst {worst / limit:.4f} x the limit, "
          f"{sum(r['ok'] for r in results)} answered, {sum(r['refused'] for r in results)} refused")
