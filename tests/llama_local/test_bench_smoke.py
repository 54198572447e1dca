"""The local-model benchmark runs (quickly, on a tiny model) and reports every figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .tinygguf import build_tiny_gguf

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_local.py"


def test_bench_local_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_gguf(tmp_path / "tiny.gguf", n_ctx=512)
    monkeypatch.setenv("SQUIRREL_BENCH_MODEL", str(model))
    spec = importlib.util.spec_from_file_location("bench_local", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(quick=True)
    for key in ("direct", "manager"):
        assert results[key]["tokens_per_s"] > 0 and results[key]["ttft_ms"] > 0
    assert results["ratio_tokens_per_s"] > 0
    assert "tokens per second" in capsys.readouterr().out
