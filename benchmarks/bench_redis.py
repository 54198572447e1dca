"""Redis plugin: budget reserve + settle pairs and rate-limit admit + settle pairs per second,
from 1 and 4 processes on one shared Redis, the round trips each request costs, and the
latency a request's budget work adds (p50, p99) over the in-memory backend.

Starts a throwaway ``redis-server`` on 127.0.0.1 with ``appendonly yes`` and ``appendfsync
everysec`` (what the plugin's README recommends: a crash of Redis loses at most a second).
Run ``python benchmarks/bench_redis.py`` (``--quick`` for a smoke run). ``main(quick)``
prints the figures and returns them as a dict.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _budget_common import (  # noqa: E402
    AMOUNT,
    CHARGES,
    ROW,
    SPENT,
    cli,
    durations,
    latency_rows,
    opened,
    pair_rates,
    print_latency,
    served,
)
from _common import percentile  # noqa: E402
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend  # noqa: E402
from squirrel_models.builtins.memory_ratelimit import MemoryRateLimitStore  # noqa: E402
from squirrel_models.ratelimit import RateCharge  # noqa: E402
from squirrel_models.secrets import Secret  # noqa: E402
from squirrel_models_redis import RedisBudgetBackend, RedisOptions, RedisRateLimitStore  # noqa: E402
from squirrel_models_redis.client import RedisClient  # noqa: E402

from tests.redis.redisserver import RedisServer, find_server  # noqa: E402

URL_ENV = "SQUIRREL_BENCH_REDIS_URL"  # the URL goes to workers by environment, never argv
#: What a rate-limit admission is charged: rpm, tpm and concurrency, all far from full.
RATE = (RateCharge("provider:p", "rpm", 10**9), RateCharge("provider:p", "tpm", 10**12),
        RateCharge("model:p/m", "concurrent", 10**6))


class RatePairs:
    """A rate-limit store seen through the budget benchmark's reserve/settle loop: one
    admission of 500 worst-case tokens, settled at 300."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def reserve(self, charges: Any, amount: Any, *, ttl: float) -> Any:
        return await self.store.reserve(RATE, 500, ttl=ttl)

    async def settle(self, lease: Any, spent: Any) -> int:
        return int(await self.store.settle(lease, 300))

    async def aclose(self) -> None:
        await self.store.aclose()


def _backend(kind: str, where: str) -> Any:
    if kind == "memory":
        return MemoryBudgetBackend()
    if kind == "memory-rate":
        return RatePairs(MemoryRateLimitStore())
    slices = kind.endswith("+slices")
    kind = kind.removesuffix("+slices")
    driver = kind.split(":", 1)[1] if ":" in kind else "auto"
    options = RedisOptions(key_prefix=where, driver=driver, max_connections=8, slices=slices)
    url = Secret(os.environ[URL_ENV], opaque=False)
    if kind.startswith("redis-rate"):
        return RatePairs(RedisRateLimitStore(options, url=url))
    return RedisBudgetBackend(options, url=url)


async def _latency(kind: str, where: str, n: int) -> list[float]:
    """Seconds per request's budget work, one at a time: reserve, then settle with the
    attempt's ledger row (written by the settlement's own script)."""
    backend = await opened(_backend(kind, where))
    samples = []
    for i in range(n + n // 10):
        t0 = time.perf_counter()
        r = await backend.reserve(CHARGES, AMOUNT, ttl=600)
        await backend.settle(r, SPENT, ledger=ROW)
        if i >= n // 10:  # warm-up excluded
            samples.append(time.perf_counter() - t0)
    await backend.aclose()
    return samples


async def _round_trips(kind: str, where: str, n: int = 50) -> float:
    """Commands sent to Redis per request (reserve + settle), counted where the client sends
    them, after a warm-up (the prefix check and script loading happen once per process)."""
    backend = await opened(_backend(kind, where)) if not kind.startswith("redis-rate") \
        else _backend(kind, where)
    r = await backend.reserve(CHARGES, AMOUNT, ttl=600)
    await backend.settle(r, SPENT)
    sent = [0]
    original = RedisClient.execute

    async def counted(self: RedisClient, operation: str, *args: Any, **kw: Any) -> Any:
        sent[0] += 1
        return await original(self, operation, *args, **kw)

    RedisClient.execute = counted  # type: ignore[method-assign]
    try:
        for _ in range(n):
            r = await backend.reserve(CHARGES, AMOUNT, ttl=600)
            if kind.startswith("redis-rate"):
                await backend.settle(r, SPENT)
            else:
                await backend.settle(r, SPENT, ledger=ROW)
    finally:
        RedisClient.execute = original  # type: ignore[method-assign]
    await backend.aclose()
    return sent[0] / n


async def _ping(n: int) -> list[float]:
    """Seconds per bare ``PING`` through redis-py's asyncio client: the round trip the machine
    gives anyone, the baseline of the figures above."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(os.environ[URL_ENV])
    await client.ping()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - t0)
    await client.aclose()
    return samples


def main(quick: bool = False) -> dict[str, Any]:
    binary = find_server()
    if binary is None:
        raise RuntimeError("no redis-server (apt-get install -y redis-server)")
    seconds, n_latency = durations(quick)
    results: dict[str, Any] = {"title": "Redis: budgets and rate limits shared by processes"}
    server = RedisServer(binary, extra=("--appendonly", "yes", "--appendfsync", "everysec"))
    with served(server, URL_ENV):
        def where(kind: str) -> str:
            return f"b{uuid.uuid4().hex[:10]}"

        print(f"pairs per second ({seconds:g} s per figure): budget reserve + settle on 2 "
              "charges; rate-limit admit + settle on rpm, tpm and concurrency")
        rates = pair_rates(__file__, _backend, where, seconds,
                           [("memory", 1), ("redis", 1), ("redis+slices", 1), ("redis:threads", 1), ("memory", 8),
                            ("redis", 8), ("redis+slices", 8), ("redis-rate", 1), ("redis-rate", 8)],
                           ("memory", "redis", "redis+slices", "redis-rate"), (15, 12),
                           lambda kind: "4 separate in-process budgets" if kind == "memory"
                           else "one shared budget / one shared set of limits")
        results["pairs_per_second"] = {k: round(v) for k, v in rates.items()}
        one, four = "1proc/{}/1tasks", "4proc/{}"
        results["ratios"] = {  # label: (numerator, denominator, digits)
            label: round(rates[a] / rates[b], digits) for label, (a, b, digits) in {
                "budget 4 processes / 1 process": (four.format("redis"), one.format("redis"), 2),
                "rate limits 4 processes / 1 process": (
                    four.format("redis-rate"), one.format("redis-rate"), 2),
                "slices / per-request, 1 process 1 task": (
                    one.format("redis+slices"), one.format("redis"), 1),
                "slices / per-request, 4 processes": (
                    four.format("redis+slices"), four.format("redis"), 1),
                "redis / memory, 1 process 1 task": (one.format("redis"), one.format("memory"), 3),
                "redis+slices / memory, 1 process 1 task": (
                    one.format("redis+slices"), one.format("memory"), 3),
                "redis+slices / memory, 4 processes": (
                    four.format("redis+slices"), four.format("memory"), 3),
            }.items()}
        print("  ratios: " + "; ".join(f"{k} {v:g}" for k, v in results["ratios"].items()))
        trips = {kind: anyio.run(_round_trips, kind, where(kind)) for kind in ("redis", "redis-rate")}
        results["round_trips_per_request"] = trips
        print(f"round trips per request: budget {trips['redis']:g} (reserve, then settle with "
              f"its ledger row), rate limits {trips['redis-rate']:g} (admit, settle)")

        lat: dict[str, list[float]] = {}
        for kind in ("memory", "redis", "redis:threads"):
            lat[kind] = anyio.run(_latency, kind, where(kind), n_latency)
        rows = latency_rows(lat)
        ping = anyio.run(_ping, n_latency)
        results["ping_round_trip_us"] = {"p50": round(percentile(ping, 50) * 1e6, 1),
                                         "p99": round(percentile(ping, 99) * 1e6, 1)}
        results["latency_per_request"] = rows
        print("budget work per request (reserve + settle with its ledger row), one at a time:")
        print_latency(rows, 15)
        print(f"a bare PING round trip (redis-py asyncio): p50 {results['ping_round_trip_us']['p50']:,.1f} us  "
              f"p99 {results['ping_round_trip_us']['p99']:,.1f} us")
        results["notes"] = [
            f"{Path(binary).name} on 127.0.0.1 (TCP, password), appendonly yes, appendfsync everysec.",
            "redis = redis-py's asyncio client; redis:threads = its blocking client in worker "
            "threads (what trio uses). redis-rate = the rate-limit store.",
            "4 processes share one key prefix (one budget, one set of rate limits); each process "
            "has its own connections. Every operation is one EVALSHA.",
            "redis+slices = leased slices on (slices = true, the defaults): reservations served "
            "from this process's slice in memory, one slice_sync script per flush (0.2 s).",
        ]
    return results


if __name__ == "__main__":
    cli(__doc__, main, _backend)
