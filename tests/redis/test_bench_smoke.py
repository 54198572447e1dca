"""The Redis benchmark runs (quickly) and reports every figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_redis.py"


def test_bench_redis_quick(redis_binary: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_redis", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(quick=True)
    rates = results["pairs_per_second"]
    assert rates["1proc/redis/1tasks"] > 0 and rates["4proc/redis"] > 0 and rates["4proc/redis-rate"] > 0
    assert rates["1proc/redis+slices/1tasks"] > 0 and rates["4proc/redis+slices"] > 0
    assert results["round_trips_per_request"] == {"redis": 2.0, "redis-rate": 2.0}
    assert {r["backend"] for r in results["latency_per_request"]} == {"memory", "redis", "redis:threads"}
    out = capsys.readouterr().out
    assert results["ping_round_trip_us"]["p50"] > 0
    assert "pairs per second" in out and "round trips per request" in out and "bare PING" in out
