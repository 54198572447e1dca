"""Manager overhead: ``ModelManager.complete`` and ``stream`` with a provider that answers at
once, against calling the same provider object directly; and a leak check.

The provider is the core's ``ScriptedProvider`` with ``Reply()`` (no delay), so what is left
is the manager's own work: ranking, token estimate, budget reservation and settlement,
fallback bookkeeping, stats, metrics (no-op OpenTelemetry API, as in an application without
an SDK) and the ledger. Runs on asyncio.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script (--leak)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ainterleaved, ratio, settled_rss, summary, target
from squirrel_models import AIRequest, ModelCard, ModelManager, Price
from squirrel_models.plugins import PluginManager
from squirrel_models.testing import Reply, ScriptedPlugin, ScriptedProvider

MODELS = 5
REQUEST = AIRequest.from_prompt("What is the capital of France? Answer in one word.",
                                max_tokens=64)
CHUNKS = 20
BUDGET = {"budget": {"limits": [{"scope": "global", "limit": "1000000"},
                                {"scope": "key:*", "period": "day", "limit": "1000"}]}}
TARGET_OVERHEAD_US = 100.0
LEAK_LIMIT = 0.05


def make(budget: bool) -> tuple[ModelManager, ScriptedProvider, ModelCard]:
    pm = PluginManager(load_entry_points=False)
    pm.register(ScriptedPlugin(), "scripted")
    mm = ModelManager(BUDGET if budget else None, plugins=pm)
    p = ScriptedProvider("p", default=Reply("Paris"))
    cards = []
    for i in range(MODELS):
        card = ModelCard.for_provider("p", f"m{i}", provider_type="scripted",
                                      features={"streaming", "system_prompt"},
                                      price=Price(Decimal("0.1") * (i + 1), Decimal("0.4")),
                                      quality=0.5)
        cards.append(card)  # registered here, so not also listed by the provider
        mm.register_model(card, p)
    return mm, p, cards[0]


async def _drain_manager_stream(mm: ModelManager, request: AIRequest) -> None:
    async with mm.stream(request) as s:
        async for _ in s:
            pass


async def _drain_direct_stream(p: ScriptedProvider, card: ModelCard, request: AIRequest
                               ) -> None:
    async for _ in p.stream(card, request):
        pass


async def per_request(budget: bool, n: int) -> list[dict[str, Any]]:
    mm, p, card = make(budget)
    stream_p = ScriptedProvider("p", default=Reply(" ".join(["word"] * CHUNKS)))
    rows = []
    async with mm:
        async def via_manager() -> None:
            await mm.complete(REQUEST)

        async def direct() -> None:
            await p.complete(card, REQUEST)

        await via_manager()
        t = await ainterleaved({"mgr": via_manager, "direct": direct}, n)
        rows.append(_row("complete", budget, t))

        p.default = stream_p.default

        async def stream_manager() -> None:
            await _drain_manager_stream(mm, REQUEST)

        async def stream_direct() -> None:
            await _drain_direct_stream(p, card, REQUEST)

        await stream_manager()
        t = await ainterleaved({"mgr": stream_manager, "direct": stream_direct}, max(1, n // 2))
        rows.append(_row(f"stream ({CHUNKS} chunks), whole", budget, t))

        # per chunk: time each __anext__ through ResponseStream vs the provider's iterator
        mgr_chunks: list[float] = []
        dir_chunks: list[float] = []
        clock = _clock()
        for _ in range(max(1, n // 20)):
            async with mm.stream(REQUEST) as s:
                it = s.__aiter__()
                await it.__anext__()  # the first chunk was fetched while opening
                while True:
                    t0 = clock()
                    try:
                        await it.__anext__()
                    except StopAsyncIteration:
                        break
                    mgr_chunks.append(clock() - t0)
            dit = p.stream(card, REQUEST).__aiter__()
            await dit.__anext__()
            while True:
                t0 = clock()
                try:
                    await dit.__anext__()
                except StopAsyncIteration:
                    break
                dir_chunks.append(clock() - t0)
        rows.append(_row("stream, per chunk", budget, {"mgr": mgr_chunks, "direct": dir_chunks}))
    return rows


def _clock() -> Any:
    import time

    return time.perf_counter


def _row(op: str, budget: bool, t: dict[str, list[float]]) -> dict[str, Any]:
    m, d = summary(t["mgr"]), summary(t["direct"])
    return {"op": op, "budget": "memory, 2 limits" if budget else "none",
            "p50_us": m["p50_us"], "p99_us": m["p99_us"],
            "direct_p50_us": d["p50_us"], "direct_p99_us": d["p99_us"],
            "overhead_p50_us": round(m["p50_us"] - d["p50_us"], 2),
            "overhead_p99_us": round(m["p99_us"] - d["p99_us"], 2),
            "ratio_p50": ratio(m["p50_us"], d["p50_us"]), "n": m["n"]}


async def leak_check(first: int, total: int) -> dict[str, Any]:
    """RSS after ``first`` requests (streamed and not) against after ``total``."""
    mm, p, _card = make(True)
    stream_reply = Reply("a few streamed words here")
    out: dict[str, Any] = {}
    async with mm:
        backend: Any = mm.budget_backend

        async def batch(k: int) -> None:
            for i in range(k):
                if i % 2:
                    p.default = stream_reply
                    await _drain_manager_stream(mm, REQUEST)
                else:
                    p.default = Reply("Paris")
                    await mm.complete(REQUEST)

        await batch(first)
        rss_first = settled_rss()
        ledger_first = len(getattr(backend, "_ledger", ()))
        await batch(total - first)
        rss_total = settled_rss()
        ledger_total = len(getattr(backend, "_ledger", ()))
        # The in-memory ledger keeps the latest max_ledger_rows rows; drop them to see the rest.
        if hasattr(backend, "_ledger"):
            backend._ledger.clear()
        rss_no_ledger = settled_rss()
    out.update({
        "requests_first": first, "requests_total": total,
        "streamed_total": total // 2, "not_streamed_total": total - total // 2,
        "rss_first_mb": round(rss_first / 2**20, 2), "rss_total_mb": round(rss_total / 2**20, 2),
        "growth": round(rss_total / rss_first - 1, 4),
        "ledger_rows_first": ledger_first, "ledger_rows_total": ledger_total,
        "rss_after_dropping_ledger_mb": round(rss_no_ledger / 2**20, 2),
        "growth_without_ledger": round(rss_no_ledger / rss_first - 1, 4),
    })
    return out


def leak_in_fresh_process(first: int, total: int) -> dict[str, Any]:
    """:func:`leak_check` in a new interpreter: RSS is then this check's alone, not whatever
    the benchmarks before it loaded (run.py runs them all in one process)."""
    proc = subprocess.run([sys.executable, __file__, "--leak", str(first), str(total)],
                          capture_output=True, text=True, check=True, timeout=1800)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


async def _main(quick: bool) -> dict[str, Any]:
    n = 20 if quick else 20_000
    table = []
    for budget in (False, True):
        table.extend(await per_request(budget, n))
    first, total = (50, 200) if quick else (10_000, 100_000)
    leak = await anyio.to_thread.run_sync(leak_in_fresh_process, first, total)
    overhead = {r["budget"]: r for r in table if r["op"] == "complete"}
    targets = [target(f"complete overhead p50, budget {b}", r["overhead_p50_us"],
                      TARGET_OVERHEAD_US, "us", quick=quick) for b, r in overhead.items()]
    targets.append(target("memory growth 10k -> 100k requests (RSS)", leak["growth"] * 100,
                          LEAK_LIMIT * 100, "%", quick=quick))
    targets.append(target("memory growth 10k -> 100k, in-memory ledger dropped",
                          leak["growth_without_ledger"] * 100, LEAK_LIMIT * 100, "%",
                          quick=quick))
    return {
        "title": "Manager overhead (ModelManager.complete / stream vs the provider directly)",
        "table": table,
        "leak": leak,
        "targets": targets,
        "notes": [
            f"{MODELS} models on one ScriptedProvider answering at once; asyncio; no "
            "OpenTelemetry SDK (the API's no-op meters, as in an app that configures none).",
            "overhead = manager p50 - direct p50 of the same provider object, interleaved in "
            "the same run; ratio = manager / direct.",
            "leak check: in a fresh interpreter; half the requests streamed; RSS after gc.collect(). The in-memory "
            "budget backend keeps the latest max_ledger_rows ledger rows (one per attempt, "
            "default 10,000); the second figure drops those rows to show nothing else "
            "accumulates.",
        ],
    }


def main(quick: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = anyio.run(_main, quick)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--leak"]:
        print(json.dumps(anyio.run(leak_check, int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps(main(quick="--quick" in sys.argv), indent=1))
