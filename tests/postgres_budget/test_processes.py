"""Real processes, each with its own pool, sharing one budget: no overspend, no leaks, and
recovery after a SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from functools import partial

import anyio
import pytest
from squirrel_models.sqlbudget import to_nanos

from tests.support import budget_workers as bw
from tests.support.stalls import runqueue_wait
from tests.support.together import Together

from . import workers
from .pgserver import PgServer

PROCESSES = 4
PER_PROCESS = 150


@pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])
def test_processes_never_overspend_and_leak_nothing(pg_server: PgServer, schema: str, slices: bool
                                                    ) -> None:
    # each child on a pool of its own
    results = bw.hammer_in_processes(partial(workers.backend, pg_server.url, schema, max_connections=4,
                                             slices=slices),
                                     PROCESSES, PER_PROCESS, timeout=90)
    bw.assert_never_overspent_and_nothing_leaked(partial(workers.backend, pg_server.url, schema), results,
                                                 PROCESSES * PER_PROCESS)


def test_sigkilled_process_leases_expire_and_spend_survives(pg_server: PgServer, schema: str) -> None:
    make = partial(workers.backend, pg_server.url, schema)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_leases_expire_and_spend_survives(make)


STREAM_PROCESSES = 4
STREAM_SECONDS = 4.0
#: Smaller than SQLite's: a request costs more round trips' time here, and the budget must
#: run out while the processes spend.
STREAM_LIMIT = Decimal("0.1")


@pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])
def test_streams_in_processes_never_overspend(pg_server: PgServer, schema: str,
                                              monkeypatch: pytest.MonkeyPatch, slices: bool) -> None:
    """Processes each on a pool of its own, one schema, streams in the mix (read to the end,
    left by ``break``, cancelled, broken mid-way; the upstream sends no usage on streams, so
    the library counts what was received): ``committed + reserved <= limit`` in every sample
    the parent takes while they run (issue 12 saw 1.0003 x the limit here), and nothing is left
    reserved or unaccounted after."""
    import psycopg

    monkeypatch.setenv(URL_ENV, pg_server.url)  # the children inherit it
    budget = {"backend": "postgres", "options": {"url_env": URL_ENV, "schema": schema,
                                                 "max_connections": 4, "connect_timeout_s": 10.0,
                                                 **bw.slice_options(slices)}}
    limit = to_nanos(STREAM_LIMIT)
    anyio.run(_open, pg_server.url, schema)
    ctx = multiprocessing.get_context("spawn")
    together = Together(ctx, STREAM_PROCESSES)  # they start once all have started their managers
    samples, violations, worst = 0, [], 0
    with ProcessPoolExecutor(STREAM_PROCESSES, mp_context=ctx, **together.pool_options()) as pool:
        futures = [pool.submit(bw.stream_spend, budget, seed, STREAM_SECONDS, 4, STREAM_LIMIT)
                   for seed in range(STREAM_PROCESSES)]
        together.go(futures)
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            while not all(f.done() for f in futures):
                row = conn.execute(f"SELECT committed, reserved FROM {schema}.buckets "
                                   "WHERE scope = 'global'").fetchone()
                if row is not None:
                    samples += 1
                    worst = max(worst, row[0] + row[1])
                    if row[0] + row[1] > limit:
                        violations.append(row)
                time.sleep(0.002)
        results = [f.result(timeout=60) for f in futures]
    assert violations == [], f"{len(violations)} of {samples} samples over the limit"
    assert samples >= 100
    kinds = {k for r in results for k in r["kinds"]}
    assert kinds == {"complete", "stream", "break", "cancel", "broken"}
    assert sum(r["refused"] for r in results) > 0, results  # the budget really ran out

    bw.assert_stream_spend_accounted(partial(workers.backend, pg_server.url, schema), STREAM_LIMIT)
    print(f"stream processes: {samples} samples, worst {worst / limit:.4f} x the limit, "
          f"{sum(r['ok'] for r in results)} answered, {sum(r['refused'] for r in results)} refused")


URL_ENV = "SQUIRREL_TEST_STREAMS_DATABASE_URL"


async def _open(url: str, schema: str) -> None:
    backend = workers.backend(url, schema)
    await backend.open()
    await backend.aclose()


def test_a_stalled_process_gives_back_the_room_its_slice_never_used(pg_server: PgServer, schema: str) -> None:
    """Stopped past its lease, woken: the room it never used comes back (it stayed charged
    until the period ended); see the helper."""
    import psycopg

    def sessions() -> list[tuple[object, ...]]:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            return child_sessions(conn, schema)

    print("stalled slice:", bw.assert_a_stalled_slice_gives_its_room_back(
        partial(workers.backend, pg_server.url, schema, application_name=CHILD_APP,
                **bw.STALL_OPTIONS),
        partial(workers.backend, pg_server.url, schema),
        settled=lambda: not any(s[2] for s in sessions()),
        store_view=lambda: f"the child's sessions (pid, state, in a transaction, waiting for, "
                           f"query, locks): {sessions()}"))


def test_sigkilled_process_slices_are_charged_in_full_after_expiry(pg_server: PgServer, schema: str
                                                                   ) -> None:
    """With slices, a killed process's slice stays held until its lease expires, and is then
    charged in full with a ledger row naming it: room lost for a while, never money."""
    make = partial(workers.backend, pg_server.url, schema, slices=True)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_slices_charged_in_full(make)


#: The application name of a child's sessions, to find them in ``pg_stat_activity``.
CHILD_APP = "squirrel-stalled-child"


def child_sessions(conn: object, schema: str) -> list[tuple[object, ...]]:
    """What the sessions of the child (:data:`CHILD_APP`) are doing: pid, state, whether a
    transaction is open, what they wait for, the query, the locks they hold (in ``schema``)."""
    return conn.execute(  # type: ignore[attr-defined,no-any-return]
        "SELECT a.pid, a.state, a.xact_start IS NOT NULL, a.wait_event_type, left(a.query, 60), "
        "  (SELECT array_agg(c.relname || ':' || l.mode) FROM pg_locks l "
        "   JOIN pg_class c ON c.oid = l.relation "
        "   JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = %s "
        "   WHERE l.pid = a.pid AND l.granted) "
        "FROM pg_stat_activity a WHERE a.application_name = %s ORDER BY a.pid",
        (schema, CHILD_APP)).fetchall()


def test_a_process_stopped_during_its_call_leaves_no_transaction_open(pg_server: PgServer,
                                                                       schema: str) -> None:
    """A process stopped (SIGSTOP, a paused VM) while the server runs its budget call leaves
    nothing open there: the call commits on its own and the others keep reserving on those
    buckets. Before, a call went as the statement, then (after its answer) the end of its
    transaction, in two messages: a process stopped between them kept the bucket rows locked
    for as long as it stayed stopped (no server timeout covers a transaction waiting for the
    rest of a pipeline), so every other process's reserve there timed out, and a stalled
    slice could not be charged (the stalled-slice test failed on it at load 5)."""
    import psycopg

    make = partial(workers.backend, pg_server.url, schema, operation_timeout_s=60.0,
                   application_name=CHILD_APP)
    anyio.run(_touch, pg_server.url, schema)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=bw.hold, args=(make, 1, 0, ready))
    with psycopg.connect(pg_server.url) as locker, \
            psycopg.connect(pg_server.url, autocommit=True) as watch:
        # Hold the bucket row, so the child's reserve waits for it at the server.
        locker.execute(f"SELECT 1 FROM {schema}.buckets FOR UPDATE")
        child.start()
        try:
            t0 = time.monotonic()
            while not [s for s in child_sessions(watch, schema) if s[3] == "Lock"]:
                assert child.is_alive(), f"the child exited with {child.exitcode}"
                assert time.monotonic() - t0 - runqueue_wait(child.pid) < 60, (  # type: ignore[arg-type]
                    f"the child's reserve never waited for the lock: {child_sessions(watch, schema)}")
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            locker.commit()  # its statement goes on at the server while it is stopped
            t0 = time.monotonic()
            while any(s[2] for s in child_sessions(watch, schema)):
                assert time.monotonic() - t0 < 30, (
                    "the stopped process's call still holds a transaction open 30 s after its "
                    f"statement could run: {child_sessions(watch, schema)}")
                time.sleep(0.05)
            assert not ready.is_set()  # it is stopped before it read the answer
            anyio.run(_reserve_beside, pg_server.url, schema)
        finally:
            os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join(10)


async def _touch(url: str, schema: str) -> None:
    """Create the schema and the bucket row of :data:`bw.HELD`."""
    backend = workers.backend(url, schema)
    await backend.release(await backend.reserve([bw.HELD], Decimal("0.10"), ttl=30))
    await backend.aclose()


async def _reserve_beside(url: str, schema: str) -> None:
    """Another process reserves on the stopped child's buckets at once: the child's
    reservation committed, and it holds no lock."""
    backend = workers.backend(url, schema, operation_timeout_s=5.0)
    try:
        await backend.reserve([bw.HELD], Decimal("0.10"), ttl=30)
        (u,) = await backend.usage([bw.HELD])
        assert (u.committed, u.reserved) == (0, Decimal("0.20"))
    finally:
        await backend.aclose()
