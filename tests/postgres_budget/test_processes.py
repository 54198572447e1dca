"""Real processes, each with its own pool, sharing one budget: no overspend, no leaks, and
recovery after a SIGKILL."""

from __future__ import annotations

import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from functools import partial

import anyio
import pytest
from squirrel_models.sqlbudget import to_nanos

from tests.support import budget_workers as bw
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
    print("stalled slice:", bw.assert_a_stalled_slice_gives_its_room_back(
        partial(workers.backend, pg_server.url, schema, **bw.STALL_OPTIONS),
        partial(workers.backend, pg_server.url, schema)))


def test_sigkilled_process_slices_are_charged_in_full_after_expiry(pg_server: PgServer, schema: str
                                                                   ) -> None:
    """With slices, a killed process's slice stays held until its lease expires, and is then
    charged in full with a ledger row naming it: room lost for a while, never money."""
    make = partial(workers.backend, pg_server.url, schema, slices=True)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_slices_charged_in_full(make)
