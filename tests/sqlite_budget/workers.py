"""Code that runs in child processes (imported by spawn, so it lives in a plain module)."""

from __future__ import annotations

import random
import sys
import time
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
from squirrel_models import AIRequest, ModelCard, ModelManager, Price, ServerError, SquirrelError
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import Fail, Reply, ScriptedPlugin, ScriptedProvider, StreamReply
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions, to_nanos

LIMIT = Decimal("2.00")
CHARGES = (Charge("global", "total", "total", LIMIT), Charge("key:team", "day", "2026-11-26", LIMIT))


def hammer(path: str, seed: int, reservations: int, tasks: int, start_at: float) -> dict[str, Any]:
    """Make ``reservations`` reservations from ``tasks`` concurrent tasks; after every granted
    reserve, check committed + reserved <= limit on every charge. Returns what was spent."""

    async def main() -> dict[str, Any]:
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path, busy_timeout_s=60))
        rng = random.Random(seed)
        out: dict[str, Any] = {"granted": 0, "refused": 0, "settled_nanos": 0, "violations": [],
                               "peak_nanos": 0}
        await backend.open()
        await anyio.sleep(max(0.0, start_at - time.time()))  # start together: real contention
        todo = iter(range(reservations))

        async def worker() -> None:
            for _ in todo:
                amount = Decimal(rng.randint(1, 10)) / 100
                try:
                    r = await backend.reserve(CHARGES, amount, ttl=600, request_id=f"{seed}")
                except BudgetExceeded:
                    out["refused"] += 1
                    await anyio.lowlevel.checkpoint()
                    continue
                out["granted"] += 1
                for u in await backend.usage(CHARGES):
                    total = u.committed + u.reserved
                    out["peak_nanos"] = max(out["peak_nanos"], to_nanos(total))
                    if total > u.limit:
                        out["violations"].append(f"{u.scope}: {total} > {u.limit}")
                await anyio.sleep(rng.random() / 500)
                if rng.random() < 0.7:
                    spent = amount * rng.randint(0, 50) / 100
                    await backend.settle(r, spent)
                    out["settled_nanos"] += to_nanos(spent)
                else:
                    await backend.release(r)

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
        await backend.aclose()
        return out

    return anyio.run(main)


def hold(path: str, held: int, settle_first: int, ready: Any) -> None:
    """Settle ``settle_first`` reservations of 0.10, then hold ``held`` reservations of 0.10
    (ttl 30 s), tell the parent, and wait to be killed."""

    async def main() -> None:
        backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path))
        c = Charge("global", "total", "total", Decimal("1.00"))
        for _ in range(settle_first):
            r = await backend.reserve([c], Decimal("0.10"), ttl=30)
            await backend.settle(r, Decimal("0.10"))
        for _ in range(held):
            await backend.reserve([c], Decimal("0.10"), ttl=30)
        ready.set()
        await anyio.sleep(3600)

    anyio.run(main)


#: Spend through ModelManager until killed: priced so that every settle commits something.
KILLED_PRICE = Price(Decimal("20"), Decimal("40"))
KILLED_TTL = 5.0


def spend_until_killed(path: str, seed: int, tasks: int, ready: Any) -> None:
    """Send requests (answers, failures that settle nothing, streams broken mid-way that settle
    what they received) through a ModelManager on the budget file from ``tasks`` concurrent
    tasks, forever; set ``ready`` once one has finished. The parent SIGKILLs the process."""

    async def main() -> None:
        rng = random.Random(seed)
        pm = PluginManager()
        pm.register(ScriptedPlugin(), "scripted")
        cards = [ModelCard.for_provider(f"k{seed}", m, provider_type="scripted", price=KILLED_PRICE,
                                        features={"streaming"}, max_output_tokens=16) for m in ("a", "b")]
        p = ScriptedProvider(f"k{seed}", cards, default=Reply("a fine answer of some words"))
        steps = [Reply("a fine answer of some words"), Fail(ServerError("boom", status_code=500)),
                 StreamReply(("one ", "two ", "three "), fail_after=2)]
        for m in ("a", "b"):
            p.script(m, *(rng.choice(steps) for _ in range(20_000)))
        config = {"budget": {"backend": "sqlite", "options": {"path": path, "busy_timeout_s": 60},
                             "limits": [{"scope": "global", "limit": "1000"}],
                             "reservation_ttl": KILLED_TTL},
                  "fallback": {"max_attempts": 3, "options": {"retry": {"base_delay": 0.0001}}}}
        async with ModelManager(config, plugins=pm) as mm:
            for c in cards:
                mm.register_model(c, p)

            async def worker(t: int) -> None:
                i = 0
                while True:
                    i += 1
                    req = AIRequest.from_prompt(f"{seed} {t} {i}", max_tokens=16)
                    try:
                        if i % 3 == 0:
                            async with mm.stream(req) as s:
                                async for _ in s:
                                    pass
                        else:
                            await mm.complete(req)
                        ready.set()
                    except SquirrelError:
                        pass

            async with anyio.create_task_group() as tg:
                for t in range(tasks):
                    tg.start_soon(worker, t)

    anyio.run(main)


if __name__ == "__main__":  # pragma: no cover - manual runs
    print(hammer(sys.argv[1], 1, 100, 4, time.time()))
