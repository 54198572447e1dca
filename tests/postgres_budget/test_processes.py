"""Real processes, each with its own pool, sharing one budget: no overspend, no leaks, and
recovery after a SIGKILL."""

from __future__ import annotations

import signal
from functools import partial

from tests.support import budget_workers as bw

from . import workers
from .pgserver import PgServer

PROCESSES = 4
PER_PROCESS = 150


def test_processes_never_overspend_and_leak_nothing(pg_server: PgServer, schema: str) -> None:
    # each child on a pool of its own
    results = bw.hammer_in_processes(partial(workers.backend, pg_server.url, schema, max_connections=4),
                                     PROCESSES, PER_PROCESS, timeout=90)
    bw.assert_never_overspent_and_nothing_leaked(partial(workers.backend, pg_server.url, schema), results,
                                                 PROCESSES * PER_PROCESS)


def test_sigkilled_process_leases_expire_and_spend_survives(pg_server: PgServer, schema: str) -> None:
    make = partial(workers.backend, pg_server.url, schema)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_leases_expire_and_spend_survives(make)
