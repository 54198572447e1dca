"""The core benchmarks run once each (quick mode) so they cannot rot. No timing assertions."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.parametrize("name", ["bench_selection", "bench_manager", "bench_startup",
                                  "bench_ratelimit"])
def test_benchmark_runs(name: str) -> None:
    module = importlib.import_module(name)
    figures = module.main(quick=True)
    assert figures["title"]
    assert figures["table"]
    for row in figures["table"]:
        assert all(v is not None for v in row.values())
    assert all(t["met"] is None for t in figures["targets"])  # quick runs judge nothing


def test_report_renders(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--only", "selection", "--out", str(tmp_path)]) == 0
    assert "Selection" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.json").read_text().startswith("{")
