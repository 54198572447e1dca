"""Rate limits: what admission plus settlement cost per request, in memory.

Two figures, each against a baseline measured in the same run (interleaved, so noise hits
both alike):

- the store alone: ``reserve`` + ``settle`` of one attempt on the built-in ``memory`` store
  against three limits (a model's rpm, tpm and max_concurrent), against two awaits of a
  coroutine that does nothing (the calling convention's own cost), and beside the in-memory
  budget backend's own pair (two charges), which every budgeted request already pays;
- the whole request: ``ModelManager.complete`` with those three limits configured, against
  the same manager without rate limits (a provider that answers at once, so what is left is
  the manager's work).

Run ``python benchmarks/bench_ratelimit.py`` (``--quick`` for a smoke run). ``main(quick)``
prints the figures and returns them.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by path (the smoke test)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ainterleaved, ratio, summary, target
from squirrel_models import AIRequest, ModelCard, ModelManager, Price
from squirrel_models.budget import Charge
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.builtins.memory_ratelimit import MemoryRateLimitStore
from squirrel_models.plugins import PluginManager
from squirrel_models.ratelimit import RateCharge
from squirrel_models.testing import Reply, ScriptedPlugin, ScriptedProvider

TARGET_ADDED_US = 5.0
BIG = 10**12  # limits nobody reaches: the benchmark measures admission, not refusal
LIMITS = {"rate_limits": {"limits": [{"scope": "model:p/m", "rpm": BIG, "tpm": BIG,
                                      "max_concurrent": 1000}]}}
REQUEST = AIRequest.from_prompt("What is the capital of France? Answer in one word.",
                                max_tokens=64)


async def _nothing() -> None:
    return None


async def store_pairs(n: int) -> dict[str, Any]:
    store = MemoryRateLimitStore()
    charges = [RateCharge("model:p/m", "rpm", BIG), RateCharge("model:p/m", "tpm", BIG),
               RateCharge("model:p/m", "concurrent", 1000)]

    async def pair() -> None:
        lease = await store.reserve(charges, 80, ttl=600)
        await store.settle(lease, 20)

    async def baseline() -> None:
        await _nothing()
        await _nothing()

    budget = MemoryBudgetBackend()
    budget_charges = [Charge("global", "total", "total", Decimal(10**9)),
                      Charge("key:team", "day", "2026-12-02", Decimal(10**9))]

    async def budget_pair() -> None:
        r = await budget.reserve(budget_charges, Decimal("0.0001"), ttl=600)
        await budget.settle(r, Decimal("0.00005"))

    t = await ainterleaved({"pair": pair, "baseline": baseline, "budget": budget_pair}, n)
    return {**_row("reserve + settle (memory store, 3 limits)", t["pair"], t["baseline"],
                   "two awaits of an empty coroutine"),
            "budget_pair_p50_us": summary(t["budget"])["p50_us"],
            "ratio_to_budget_pair": ratio(summary(t["pair"])["p50_us"],
                                          summary(t["budget"])["p50_us"])}


def _manager(limits: bool) -> ModelManager:
    pm = PluginManager(load_entry_points=False)
    pm.register(ScriptedPlugin(), "scripted")
    mm = ModelManager(LIMITS if limits else None, plugins=pm)
    p = ScriptedProvider("p", default=Reply("Paris"))
    mm.register_model(ModelCard.for_provider("p", "m", provider_type="scripted",
                                             features={"streaming", "system_prompt"},
                                             price=Price(Decimal("0.1"), Decimal("0.4"))), p)
    return mm


async def manager_requests(n: int) -> dict[str, Any]:
    with_limits, without = _manager(True), _manager(False)
    async with with_limits, without:
        async def limited() -> None:
            await with_limits.complete(REQUEST)

        async def plain() -> None:
            await without.complete(REQUEST)

        await limited()
        await plain()
        t = await ainterleaved({"limited": limited, "plain": plain}, n)
    return _row("ModelManager.complete, 3 limits", t["limited"], t["plain"],
                "the same manager without rate limits")


def _row(op: str, measured: list[float], base: list[float], baseline: str) -> dict[str, Any]:
    m, b = summary(measured), summary(base)
    return {"op": op, "p50_us": m["p50_us"], "p99_us": m["p99_us"],
            "baseline": baseline, "baseline_p50_us": b["p50_us"],
            "added_p50_us": round(m["p50_us"] - b["p50_us"], 2),
            "ratio_p50": ratio(m["p50_us"], b["p50_us"]), "n": m["n"]}


async def _run(quick: bool) -> list[dict[str, Any]]:
    n_store = 200 if quick else 50_000
    n_manager = 50 if quick else 5_000
    return [await store_pairs(n_store), await manager_requests(n_manager)]


def main(quick: bool = False) -> dict[str, Any]:
    rows = anyio.run(_run, quick)
    store = rows[0]
    figures: dict[str, Any] = {
        "title": "Rate limits: admission + settlement per request (memory store)",
        "table": rows,
        "targets": [
            target("reserve + settle, added over the baseline (p50)", store["added_p50_us"],
                   TARGET_ADDED_US, "us", quick=quick),
        ],
        "notes": [
            "Baselines are measured in the same run, interleaved in blocks; read the added "
            "microseconds and the ratios, absolute times move with the machine's load (the "
            "ratio to the budget backend's pair is the steadiest figure).",
            "The store keeps a sliding log: one entry per admission still in the window, so "
            "the run also exercises its trimming.",
            "The request row (no target) includes what the manager does around the store: the "
            "model's charges (cached), the lease on the request, settlement with the real "
            "tokens; its added time is the store's pair plus a few frames.",
        ],
    }
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
