"""Real processes, each with its own connections, sharing one budget on one Redis: no
overspend, no leaks, and recovery after SIGKILLs."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import pytest
from squirrel_models.budget import Charge
from squirrel_models.sqlbudget import to_nanos

from tests.support import budget_workers as bw

from . import workers
from .redisserver import RedisServer

PROCESSES = 4
PER_PROCESS = 150


@pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])
def test_processes_never_overspend_and_leak_nothing(redis_server: RedisServer, prefix: str,
                                                    slices: bool) -> None:
    results = bw.hammer_in_processes(partial(workers.backend, redis_server.url, prefix,
                                             max_connections=4, slices=slices),
                                     PROCESSES, PER_PROCESS, timeout=90)
    bw.assert_never_overspent_and_nothing_leaked(partial(workers.backend, redis_server.url, prefix),
                                                 results, PROCESSES * PER_PROCESS)


def test_sigkilled_process_leases_expire_and_spend_survives(redis_server: RedisServer,
                                                            prefix: str) -> None:
    make = partial(workers.backend, redis_server.url, prefix)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_leases_expire_and_spend_survives(make)


def test_a_stalled_process_gives_back_the_room_its_slice_never_used(redis_server: RedisServer, prefix: str) -> None:
    """Stopped past its lease, woken: the room it never used comes back (it stayed charged
    until the period ended); see the helper."""
    print("stalled slice:", bw.assert_a_stalled_slice_gives_its_room_back(
        partial(workers.backend, redis_server.url, prefix, **bw.STALL_OPTIONS),
        partial(workers.backend, redis_server.url, prefix)))


def test_sigkilled_process_slices_are_charged_in_full_after_expiry(redis_server: RedisServer,
                                                                   prefix: str) -> None:
    """With slices, a killed process's slice stays held until its lease expires, and is then
    charged in full with a ledger row naming it: room lost for a while, never money."""
    make = partial(workers.backend, redis_server.url, prefix, slices=True)
    exitcode = bw.sigkill_when_ready(bw.hold, (make, 5, 3), message="the child never got its reservations")
    assert exitcode == -signal.SIGKILL
    bw.assert_slices_charged_in_full(make)


#: With slices: leases short enough to expire soon after the last kill.
SLICE_LEASE_S = 1.0
SLICE_OPTIONS = {"slices": True, "slice_flush_s": 0.2, "slice_lease_s": SLICE_LEASE_S}


@pytest.mark.parametrize("slices", [False, True], ids=["per-request", "slices"])
def test_random_sigkills_never_overspend_at_any_sample(redis_server: RedisServer, prefix: str,
                                                       slices: bool) -> None:
    """K processes x M tasks spend on two charges while the parent SIGKILLs a random one every
    few hundred ms (and starts another) and samples the buckets: committed + reserved <= limit
    at every sample; after the dead processes' leases (and slices) expire, nothing is held and
    the books balance (audit)."""
    options = SLICE_OPTIONS if slices else {}
    limit = Decimal("0.50")
    charges = (Charge("global", "total", "total", limit), Charge("key:team", "day", "2026-11-26", limit))
    ttl = 1.5
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(11)
    procs: list[tuple[multiprocessing.process.BaseProcess, Any]] = []
    seed = 0

    def spawn() -> None:
        nonlocal seed
        seed += 1
        ready = ctx.Event()
        p = ctx.Process(target=workers.spend_forever,
                        args=(redis_server.url, prefix, charges, seed, 4, ttl, ready, options),
                        daemon=True)
        p.start()
        procs.append((p, ready))

    def spending() -> list[multiprocessing.process.BaseProcess]:
        return [p for p, ready in procs if p.is_alive() and ready.is_set()]

    samples = 0
    peak = 0
    kills = 0
    sampler = workers.backend(redis_server.url, prefix)

    async def sample_for(seconds: float) -> None:
        nonlocal samples, peak
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for u in await sampler.usage(charges):
                total = to_nanos(u.committed + u.reserved)
                peak = max(peak, total)
                assert total <= to_nanos(limit), (u.scope, u.committed, u.reserved)
            samples += 1
            await anyio.sleep(0.002)

    async def main() -> None:
        nonlocal kills
        for _ in range(3):
            spawn()
        start = time.monotonic()
        while len(spending()) < 3:  # the children import (seconds on a busy machine) and start
            assert time.monotonic() - start < 60, "the children never started spending"
            await sample_for(0.1)
        while kills < 8:
            alive = spending()
            if len(alive) >= 2:  # kill one that is spending (mid-flight), start another
                os.kill(rng.choice(alive).pid, signal.SIGKILL)  # type: ignore[arg-type]
                kills += 1
                spawn()
            await sample_for(rng.uniform(0.2, 0.5))
            assert time.monotonic() - start < 120, "the replacements never started spending"
        for p, _ in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for p, _ in procs:
            p.join(10)
        # every lease (and slice: charged in full) of the dead has expired by now
        await sample_for(max(ttl, SLICE_LEASE_S if slices else 0) + 0.5)
        assert await sampler.reconcile() >= 0
        for u in await sampler.usage(charges):
            assert u.reserved == 0
            assert u.committed <= limit
        audit = await sampler.audit()
        assert audit["open"] == 0 and audit["mismatched"] == []
        await sampler.aclose()

    anyio.run(main)
    assert kills == 8 and samples > 100
    assert peak > to_nanos(limit) // 2  # the budget was really contended
