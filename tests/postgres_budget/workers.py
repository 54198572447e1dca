"""Code that runs in child processes (imported by spawn, so it lives in a plain module)."""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded
from squirrel_models.secrets import Secret
from squirrel_models.sqlbudget import to_nanos
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

LIMIT = Decimal("2.00")
CHARGES = (Charge("global", "total", "total", LIMIT), Charge("key:team", "day", "2026-11-26", LIMIT))


def backend(url: str, schema: str, **options: Any) -> PostgresBudgetBackend:
    return PostgresBudgetBackend(PostgresBudgetOptions(schema=schema, **options), url=Secret(url))


def hammer(url: str, schema: str, seed: int, reservations: int, tasks: int, start_at: float
           ) -> dict[str, Any]:
    """Make ``reservations`` reservations from ``tasks`` concurrent tasks on a pool of its own;
    after every granted reserve, check committed + reserved <= limit on every charge."""

    async def main() -> dict[str, Any]:
        b = backend(url, schema, max_connections=4)
        rng = random.Random(seed)
        out: dict[str, Any] = {"granted": 0, "refused": 0, "settled_nanos": 0, "violations": [],
                               "peak_nanos": 0}
        await b.open()
        await anyio.sleep(max(0.0, start_at - time.time()))  # start together: real contention
        todo = iter(range(reservations))

        async def worker() -> None:
            for _ in todo:
                amount = Decimal(rng.randint(1, 10)) / 100
                try:
                    r = await b.reserve(CHARGES, amount, ttl=600, request_id=f"{seed}")
                except BudgetExceeded:
                    out["refused"] += 1
                    await anyio.lowlevel.checkpoint()
                    continue
                out["granted"] += 1
                for u in await b.usage(CHARGES):
                    total = u.committed + u.reserved
                    out["peak_nanos"] = max(out["peak_nanos"], to_nanos(total))
                    if total > u.limit:
                        out["violations"].append(f"{u.scope}: {total} > {u.limit}")
                await anyio.sleep(rng.random() / 500)
                if rng.random() < 0.7:
                    spent = amount * rng.randint(0, 50) / 100
                    await b.settle(r, spent)
                    out["settled_nanos"] += to_nanos(spent)
                else:
                    await b.release(r)

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
        await b.aclose()
        return out

    return anyio.run(main)


def hold(url: str, schema: str, held: int, settle_first: int, ready: Any) -> None:
    """Settle ``settle_first`` reservations of 0.10, then hold ``held`` reservations of 0.10
    (ttl 30 s), tell the parent, and wait to be killed."""

    async def main() -> None:
        b = backend(url, schema)
        c = Charge("global", "total", "total", Decimal("1.00"))
        for _ in range(settle_first):
            r = await b.reserve([c], Decimal("0.10"), ttl=30)
            await b.settle(r, Decimal("0.10"))
        for _ in range(held):
            await b.reserve([c], Decimal("0.10"), ttl=30)
        ready.set()
        await anyio.sleep(3600)

    anyio.run(main)
