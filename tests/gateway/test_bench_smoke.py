"""The gateway benchmark runs (quick mode) through real server processes. Figures are not
asserted: timing belongs to benchmarks, not tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gateway.py"


def test_bench_gateway_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_gateway", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(quick=True)
    paths = {row["path"] for row in figures["table"]}
    assert {"direct", "gateway (uvicorn)"} <= paths
    assert all(row["rps_64"] > 0 and row["p50_us"] > 0 for row in figures["table"])
    assert all(t["met"] is None for t in figures["targets"])  # quick mode makes no claims
