"""Code that runs in the child processes of test_processes (a plain module, for spawn)."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import anyio
from squirrel_models import AIRequest, ModelManager, Price, ServerError, SquirrelError
from squirrel_models.testing import Fail, Reply, StreamReply

from tests.support.budget_workers import complete_or_stream, scripted_models
from tests.support.together import join, start_together

LIMIT = Decimal("0.08")
#: A lease must outlive the request timeout (10 s) plus the cleanup bound (config validates it).
TTL = 15.0
PRICE = Price(Decimal("20"), Decimal("40"))  # USD per million tokens: ~$0.0006 worst case


#: With slices: leases short enough to expire before the recovery looks (TTL + 1 s later).
SLICE_OPTIONS = {"slices": True, "slice_lease_s": 5.0}


def config(path: str, slices: bool = False) -> dict[str, Any]:
    options = {"path": path, "busy_timeout_s": 60, **(SLICE_OPTIONS if slices else {})}
    return {"budget": {"backend": "sqlite", "options": options,
                       "limits": [{"scope": "global", "limit": str(LIMIT)}], "reservation_ttl": TTL},
            "fallback": {"max_attempts": 3, "options": {"retry": {"base_delay": 0.001}}}, "timeout": 10}


def spend(path: str, seed: int, requests: int, tasks: int, together: tuple[Any, Any] | None = None,
          ready: Any = None, slices: bool = False) -> dict[str, Any]:
    """Send ``requests`` requests (a mix of answers, failures, broken streams) from ``tasks``
    concurrent tasks through a ModelManager on the shared budget file, started together with
    the other children (``together``: :meth:`Together.handles`, for a child not of the
    pool); after each one check committed + reserved <= limit. Returns counts (a SIGKILLed
    child returns nothing); sets ``ready`` (an Event) once its first request is done."""
    if together is not None:
        join(*together)

    async def main() -> dict[str, Any]:
        rng = random.Random(seed)
        steps = [Reply("a fine answer of some words", delay=0.02), Fail(ServerError("boom", status_code=500)),
                 StreamReply(("one ", "two ", "three "), delay=0.005, fail_after=2)]
        pm, cards, p = scripted_models(f"p{seed}", PRICE, steps, requests * 2, rng)
        out: dict[str, Any] = {"ok": 0, "errors": 0, "violations": []}
        async with ModelManager(config(path, slices), plugins=pm) as mm:
            for c in cards:
                mm.register_model(c, p)
            await start_together()
            todo = iter(range(requests))

            async def worker() -> None:
                for i in todo:
                    req = AIRequest.from_prompt(f"process {seed} request {i}", max_tokens=16)
                    try:
                        await complete_or_stream(mm, req, stream=i % 3 == 0)
                        out["ok"] += 1
                        if ready is not None:
                            ready.set()
                    except SquirrelError:
                        out["errors"] += 1
                    (u,) = await mm.tokens.check_budget(cards[0])
                    if u.committed + u.reserved > u.limit:
                        out["violations"].append(f"{u.committed} + {u.reserved} > {u.limit}")

            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(worker)
        return out

    return anyio.run(main)
