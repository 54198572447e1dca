"""The HTTP benchmark runs (quick mode) and measures every client. Figures are not asserted:
timing belongs to benchmarks, not tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_http.py"


def test_bench_http_quick(capsys: object) -> None:
    spec = importlib.util.spec_from_file_location("bench_http", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(quick=True)
    assert set(results) == set(bench.CLIENTS)
    assert all(r["rps"] > 0 and r["p50_us"] > 0 and r["chunk_us"] > 0 for r in results.values())


def test_bench_fallback_quick() -> None:
    spec = importlib.util.spec_from_file_location("bench_fallback", BENCH.with_name("bench_fallback.py"))
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(quick=True)
    assert r["table"]
    assert all(t["met"] is None for t in r["targets"])  # quick mode makes no claims


def test_bench_realistic_quick() -> None:
    spec = importlib.util.spec_from_file_location("bench_realistic", BENCH.with_name("bench_realistic.py"))
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(quick=True)
    assert set(figures["clients"]) == set(bench.CLIENTS)
    r = bench.report(figures, quick=True)
    assert r["table"] and r["imports"]
    assert all(t["met"] is None for t in r["targets"])  # quick mode makes no claims
