"""The PostgreSQL budget benchmark runs (quickly) and reports every figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_pg_budget.py"


def test_bench_pg_budget_quick(pg_bindir: Any, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_pg_budget", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(quick=True)
    rates = results["pairs_per_second"]
    assert rates["1proc/postgres/1tasks"] > 0 and rates["4proc/postgres"] > 0 and rates["4proc/sqlite"] > 0
    assert {r["backend"] for r in results["latency_per_request"]} >= {"memory", "sqlite", "postgres"}
    out = capsys.readouterr().out
    assert "pairs per second" in out and "added over in-memory" in out
