"""Fallback path: a primary that answers 500 and a backup that answers, through ModelManager
with the openai plugin, against making the same two calls by hand.

Against bench_http's stub (its own process): any path under ``/fail/`` answers 500 with an
OpenAI-style error body, ``/v1`` answers at once. Timed in one event loop, interleaved in
blocks so noise hits every client alike, all on the aiohttp engine:

- by hand, plain ``aiohttp``: POST to the primary, read the 500, POST to the backup (the
  baseline); and one POST to the backup alone (context);
- by hand, the plugin's two providers: ``complete`` on the primary, catch ``ServerError``,
  ``complete`` on the backup;
- ``ModelManager``: the fallback (primary ranked first, fails, the backup answers), and a
  request pinned to the backup (one call, no failure).

The manager uses ``strategies = ["next_candidate"]``: the default list starts with ``retry``,
which backs off a random 0-250 ms before trying the primary again, a deliberate wait rather
than overhead. The circuit breaker's threshold is out of reach and the stats-based scoring
rules are off, so the primary stays first on every request. Run
``python benchmarks/bench_fallback.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import ainterleaved, ratio, summary, target  # noqa: E402
from bench_http import BODY, StubServer  # noqa: E402

TARGET_ADDED_US = 500.0
PRICE = {"input": "0.1", "output": "0.2"}


def _config(stub: StubServer) -> dict[str, Any]:
    def provider(name: str, base: str, quality: float) -> dict[str, Any]:
        return {"name": name, "type": "openai", "discover": False,
                "options": {"base_url": base, "transport": "aiohttp", "prices_from": None},
                "models": [{"name": "stub", "price": PRICE, "quality": quality}]}

    return {"providers": [provider("primary", stub.failing_url, 0.9),
                          provider("backup", stub.base_url, 0.5)],
            "fallback": {"strategies": ["next_candidate"], "max_attempts": 2},
            "circuit_breaker": {"failure_threshold": 1_000_000_000},
            "scoring": {"weights": {"latency": 0, "reliability": 0}}}


async def _measure(stub: StubServer, n: int) -> dict[str, list[float]]:
    import aiohttp
    from squirrel_models import AIRequest, ModelCard, ModelManager, ModelRequirements
    from squirrel_models.errors import ServerError
    from squirrel_models_openai import OpenAIOptions, OpenAIProvider

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}
    primary_url = stub.failing_url + "/chat/completions"
    backup_url = stub.base_url + "/chat/completions"

    async def post(url: str) -> tuple[int, Any]:
        async with session.post(url, data=body, headers=headers) as r:
            return r.status, json.loads(await r.read())

    async def plain_two() -> None:
        status, _ = await post(primary_url)
        assert status == 500
        status, payload = await post(backup_url)
        assert status == 200 and payload["choices"]

    async def plain_one() -> None:
        status, _ = await post(backup_url)
        assert status == 200

    req = AIRequest.from_prompt("Say hello.", max_tokens=16)
    options = {"discover": False, "transport": "aiohttp", "prices_from": None}
    p_primary = OpenAIProvider("primary", OpenAIOptions(base_url=stub.failing_url, **options))  # type: ignore[arg-type]
    p_backup = OpenAIProvider("backup", OpenAIOptions(base_url=stub.base_url, **options))  # type: ignore[arg-type]
    c_primary = ModelCard.for_provider("primary", "stub", provider_type="openai")
    c_backup = ModelCard.for_provider("backup", "stub", provider_type="openai")

    async def providers_two() -> None:
        try:
            await p_primary.complete(c_primary, req)
        except ServerError:
            pass
        else:
            raise AssertionError("the primary answered")
        await p_backup.complete(c_backup, req)

    mm = ModelManager(_config(stub))
    await mm.start()
    only_backup = ModelRequirements(models={"backup/stub"})

    async def manager_fallback() -> None:
        r = await mm.complete(req)
        assert r.model == "backup/stub" and len(r.attempts) == 2, r.attempts

    async def manager_one() -> None:
        await mm.complete(req, only_backup)

    clients: dict[str, Callable[[], Awaitable[None]]] = {
        "plain aiohttp, backup only": plain_one,
        "plain aiohttp, 500 then backup (by hand)": plain_two,
        "providers, 500 then backup (by hand)": providers_two,
        "ModelManager, backup only": manager_one,
        "ModelManager, fallback 500 -> backup": manager_fallback,
    }
    try:
        for fn in clients.values():  # warm up: connections, imports, tokenizer, caches
            for _ in range(20):
                await fn()
        return await ainterleaved(clients, n, block=50)
    finally:
        await mm.aclose()
        await p_primary.aclose()
        await p_backup.aclose()
        await session.close()


def main(quick: bool = False) -> dict[str, Any]:
    n = 30 if quick else 3000
    with StubServer() as stub:
        samples = anyio.run(_measure, stub, n)
    s = {k: summary(v) for k, v in samples.items()}
    base = s["plain aiohttp, 500 then backup (by hand)"]
    table = [{"client": k, "p50_us": v["p50_us"], "p99_us": v["p99_us"],
              "added_p50_us": round(v["p50_us"] - base["p50_us"], 2),
              "ratio_p50": ratio(v["p50_us"], base["p50_us"]), "n": v["n"]} for k, v in s.items()]
    fb = s["ModelManager, fallback 500 -> backup"]
    added = fb["p50_us"] - base["p50_us"]
    # What the failed attempt costs inside the manager beyond its extra HTTP call.
    failed_attempt = ((fb["p50_us"] - s["ModelManager, backup only"]["p50_us"])
                      - (base["p50_us"] - s["plain aiohttp, backup only"]["p50_us"]))
    print(f"fallback path, {n} requests per client, interleaved")
    for row in table:
        print(f"  {row['client']:<42} p50 {row['p50_us']:>8.0f} us  p99 {row['p99_us']:>8.0f} us  "
              f"added p50 {row['added_p50_us']:>+8.0f} us  x{row['ratio_p50']:.2f}")
    print(f"  fallback added over the two calls by hand: {added:+.0f} us p50 (target < {TARGET_ADDED_US:.0f})")
    return {
        "title": "Fallback path (primary 500, backup answers) vs the same two calls by hand",
        "table": table,
        "fallback": {"added_p50_us": round(added, 2), "ratio_p50": ratio(fb["p50_us"], base["p50_us"]),
                     "failed_attempt_in_manager_us": round(failed_attempt, 2)},
        "targets": [target("fallback added latency p50 over the two calls by hand (plain aiohttp)",
                           added, TARGET_ADDED_US, "us", quick=quick)],
        "notes": [
            "bench_http's stub in its own process; every client on the aiohttp engine; one event loop, "
            "interleaved in blocks of 50; added and ratio are against plain aiohttp making the two calls by hand.",
            "ModelManager: fallback strategies [next_candidate] (the default list retries the primary first "
            "after a random 0-250 ms backoff), breaker threshold out of reach, latency and reliability scoring "
            "off so the primary ranks first on every request.",
            "failed_attempt_in_manager_us: (manager fallback - manager backup only) - (plain two calls - plain "
            "one call), the manager's cost of the failed attempt beyond its HTTP round trip.",
        ],
    }


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv), indent=1))
