"""The budget benchmark runs (quickly) and reports every figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_budget.py"


def test_bench_budget_quick(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_budget", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(quick=True)
    assert results["1proc/sqlite/1tasks"] > 0 and results["4proc/sqlite"] > 0
    assert results["ledger"]["mb_per_million"] > 0
    out = capsys.readouterr().out
    assert "pairs per second" in out and "per million attempts" in out


def test_bench_ledger_quick(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_ledger", BENCH.parent / "bench_ledger.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.main(quick=True)  # checks SQL == Python for every grouping itself
    assert [row["by"] for row in figures["table"]] == ["model", "provider", "scope", "day"]
    assert all(row["sql_s"] > 0 for row in figures["table"])
    assert "vs the backend's summarize in SQL" in capsys.readouterr().out
