"""The backend factory the child processes of test_processes build theirs with (imported by
spawn, so it lives in a plain module), and the children of the SIGKILL test."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import anyio
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded, BudgetStoreError
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions


def backend(url: str, prefix: str, **options: Any) -> RedisBudgetBackend:
    return RedisBudgetBackend(RedisOptions(key_prefix=prefix, **options), url=Secret(url, opaque=False))


def spend_forever(url: str, prefix: str, charges: tuple[Charge, ...], seed: int, tasks: int,
                  ttl: float, ready: Any, options: dict[str, Any] | None = None) -> None:
    """Reserve, hold a while, then mostly release (settling a little now and then, so the
    budget stays contended for long), in ``tasks`` tasks, until killed; set ``ready`` (an
    Event) once Redis answered. ``options``: more backend options (slices)."""

    async def main() -> None:
        b = backend(url, prefix, max_connections=tasks, **(options or {}))
        rng = random.Random(seed)

        async def worker() -> None:
            while True:
                amount = Decimal(rng.randint(10, 50)) / 1000
                try:
                    r = await b.reserve(charges, amount, ttl=ttl, request_id=str(seed))
                except BudgetExceeded:
                    ready.set()
                    await anyio.sleep(0.005)
                    continue
                except BudgetStoreError:
                    await anyio.sleep(0.005)
                    continue
                ready.set()
                await anyio.sleep(rng.random() / 20)
                if rng.random() < 0.2:
                    await b.settle(r, amount * rng.randint(0, 10) / 10000)
                else:
                    await b.release(r)

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)

    anyio.run(main)


def admit_forever(url: str, prefix: str, charges: tuple[Any, ...], seed: int, tasks: int,
                  ttl: float, ready: Any, go: Any, first_hold: float = 0.0) -> None:
    """Admit attempts on ``charges`` (rate limits) from ``tasks`` tasks until killed: hold each
    a little, then settle it with at most its reserved tokens (or release one in five); set
    ``ready`` once Redis answered, then wait for ``go`` (set once every first process is
    ready). Each task holds its first lease ``first_hold`` seconds: the first processes' tasks
    then contend for the concurrency slots together, however late the machine wakes each."""
    from squirrel_models.errors import RateLimitExceeded, RateLimitStoreError
    from squirrel_models_redis import RedisRateLimitStore

    async def main() -> None:
        store = RedisRateLimitStore(RedisOptions(key_prefix=prefix, max_connections=tasks),
                                    url=Secret(url, opaque=False))
        rng = random.Random(seed)
        await store.usage(charges)
        ready.set()
        await anyio.to_thread.run_sync(go.wait)

        async def worker() -> None:
            hold = first_hold
            while True:
                tokens = rng.randint(50, 400)
                try:
                    lease = await store.reserve(charges, tokens, ttl=ttl, request_id=str(seed))
                except RateLimitExceeded:
                    await anyio.sleep(rng.random() / 100)
                    continue
                except RateLimitStoreError:
                    await anyio.sleep(0.01)
                    continue
                await anyio.sleep(hold or rng.random() / 50)
                hold = 0.0
                if rng.random() < 0.2:
                    await store.release(lease)
                else:
                    await store.settle(lease, rng.randint(0, tokens))

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)

    anyio.run(main)
