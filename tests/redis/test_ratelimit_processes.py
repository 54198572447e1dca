"""K processes x M tasks admitting against rpm, tpm and concurrency limits on one Redis, with
random SIGKILLs: judged from the server's own append-only file (every admission, settlement
and release it made, also those of the processes killed right after), what was admitted and
not released in any window never passes the rpm and tpm limits, the slots in flight never
pass theirs, and the killed processes' slots come back when their leases expire."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from squirrel_models.ratelimit import RateCharge
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisOptions, RedisRateLimitStore

from . import aof, workers
from .redisserver import RedisServer

WINDOW = 1.0
RPM = RateCharge("model:p/m", "rpm", 40, WINDOW)
TPM = RateCharge("model:p/m", "tpm", 5000, WINDOW)
SLOTS = RateCharge("provider:p", "concurrent", 8)
CHARGES = (RPM, TPM, SLOTS)
TTL = 1.5
PROCESSES, TASKS, KILLS = 3, 6, 6


@pytest.fixture
def aof_server(redis_binary: str) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, extra=("--appendonly", "yes", "--appendfsync", "no"))
    server.start()
    yield server
    server.remove()


def test_k_processes_with_sigkills_never_pass_a_limit(aof_server: RedisServer, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(5)
    procs: list[tuple[Any, Any]] = []
    go = ctx.Event()  # the first processes start admitting together (a process spawned later: at once)

    def spawn() -> None:
        ready = ctx.Event()
        p = ctx.Process(target=workers.admit_forever, daemon=True,
                        args=(aof_server.url, prefix, CHARGES, len(procs) + 1, TASKS, TTL, ready, go,
                              0.5 if len(procs) < PROCESSES else 0.0))
        p.start()
        procs.append((p, ready))

    def admitting() -> list[Any]:
        return [p for p, ready in procs if p.is_alive() and ready.is_set()]

    for _ in range(PROCESSES):
        spawn()
    start = time.monotonic()
    while len(admitting()) < PROCESSES:
        assert time.monotonic() - start < 60, "the children never started"
        time.sleep(0.05)
    go.set()
    kills = 0
    while kills < KILLS:
        time.sleep(rng.uniform(0.3, 0.8))
        alive = admitting()
        if len(alive) >= 2:
            os.kill(rng.choice(alive).pid, signal.SIGKILL)
            kills += 1
            spawn()
        assert time.monotonic() - start < 120
    time.sleep(1.0)
    for p, _ in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
    for p, _ in procs:
        p.join(10)

    async def after() -> int:
        time_left = TTL + 0.2
        await anyio.sleep(time_left)  # every lease has expired: their slots come back
        store = RedisRateLimitStore(RedisOptions(key_prefix=prefix), url=Secret(aof_server.url, opaque=False))
        await store.reconcile()
        u = await store.usage(CHARGES)
        await store.aclose()
        # nothing leaked: every slot came back, every admission left its window
        assert [(x.used, x.reserved) for x in u] == [(0, 0), (0, 0), (0, 0)]
        return u[0].used

    anyio.run(after)

    # The server's record: admissions (member r<amount>:<lease>:<i> added to a log), their
    # settlements (re-added as s<tokens>:... at the same score) and releases (removed).
    logs = {f"{{{prefix}}}:rl:log:{c.scope}\x1f{c.kind}".encode(): c for c in (RPM, TPM)}
    slot_field = f"c\x1f{SLOTS.scope}".encode()
    entries: dict[tuple[bytes, bytes], list[Any]] = {}  # (key, lease:i) -> [at, amount, alive]
    in_flight = peak = 0
    for args in aof.commands(aof_server.root):
        name = args[0].upper()
        if name == b"ZADD" and args[1] in logs:
            for score, member in zip(args[2::2], args[3::2], strict=True):
                state_amount, _, ref = member.partition(b":")
                entries[(args[1], ref)] = [float(score), int(state_amount[1:]), True]
        elif name == b"ZREM" and args[1] in logs:
            for member in args[2:]:
                entries[(args[1], member.partition(b":")[2])][2] = False
        elif name == b"HINCRBY" and args[2] == slot_field:
            in_flight += int(args[3])
            peak = max(peak, in_flight)
            assert in_flight <= SLOTS.limit
    assert peak == SLOTS.limit  # the slots were really contended
    admitted = 0
    for key, charge in logs.items():
        kept = sorted((at, amount) for (k, _), (at, amount, alive) in entries.items()
                      if k == key and alive)
        admitted = max(admitted, len(kept))
        most = 0
        for j, (at_j, _) in enumerate(kept):
            together = [a for at, a in kept[:j + 1] if at > at_j - WINDOW + 1e-6]
            total = len(together) if charge.kind == "rpm" else sum(together)
            most = max(most, total)
            assert total <= charge.limit, (charge.kind, total, at_j)
        assert most >= charge.limit * 0.8, (charge.kind, most)  # the limit was really reached
    assert admitted > 100
