"""Code that runs in child processes (imported by spawn, so it lives in a plain module); the
reserve/settle children are in :mod:`tests.support.budget_workers`."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
from squirrel_models import AIRequest, ModelManager, Price, ServerError, SquirrelError
from squirrel_models.testing import Fail, Reply, StreamReply
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from tests.support import budget_workers
from tests.support.budget_workers import complete_or_stream, hammer, scripted_models


def backend(path: str, *, clock: Callable[[], float] = time.time, **options: Any) -> SqliteBudgetBackend:
    return SqliteBudgetBackend(SqliteBudgetOptions(path=path, **options), clock=clock)


#: Spend through ModelManager until killed: priced so that every settle commits something.
KILLED_PRICE = Price(Decimal("20"), Decimal("40"))
#: A lease must outlive the request timeout plus the cleanup bound (config validates it).
KILLED_TTL = 15.0


def spend_until_killed(path: str, seed: int, tasks: int, ready: Any, slices: bool = False) -> None:
    """Send requests (answers, failures that settle nothing, streams broken mid-way that settle
    what they received) through a ModelManager on the budget file from ``tasks`` concurrent
    tasks, forever; set ``ready`` once one has finished. The parent SIGKILLs the process."""

    async def main() -> None:
        rng = random.Random(seed)
        steps = [Reply("a fine answer of some words"), Fail(ServerError("boom", status_code=500)),
                 StreamReply(("one ", "two ", "three "), fail_after=2)]
        pm, cards, p = scripted_models(f"k{seed}", KILLED_PRICE, steps, 20_000, rng,
                                       default=Reply("a fine answer of some words"))
        options = {"path": path, "busy_timeout_s": 60, **budget_workers.slice_options(slices)}
        config = {"budget": {"backend": "sqlite", "options": options,
                             "limits": [{"scope": "global", "limit": "1000"}],
                             "reservation_ttl": KILLED_TTL},
                  "timeout": 10,
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
                        await complete_or_stream(mm, req, stream=i % 3 == 0)
                        ready.set()
                    except SquirrelError:
                        pass

            async with anyio.create_task_group() as tg:
                for t in range(tasks):
                    tg.start_soon(worker, t)

    anyio.run(main)


STREAM_LIMIT = budget_workers.STREAM_LIMIT


def stream_spend(path: str, seed: int, seconds: float, tasks: int, slices: bool = False
                 ) -> dict[str, Any]:
    """:func:`tests.support.budget_workers.stream_spend` on the budget file ``path`` (with
    ``slices``: leased slices on)."""
    return budget_workers.stream_spend({"backend": "sqlite",
                                        "options": {"path": path, "busy_timeout_s": 60,
                                                    **budget_workers.slice_options(slices)}},
                                       seed, seconds, tasks)


if __name__ == "__main__":  # pragma: no cover - manual: python -m tests.sqlite_budget.workers PATH
    print(hammer(partial(backend, sys.argv[1], busy_timeout_s=60), 1, 100, 4))
