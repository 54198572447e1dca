"""The llama.cpp build the tests (and the demo) run: one known to crash is never used, and a
user running one is warned before the first load."""

from __future__ import annotations

import logging
from pathlib import Path

import llama_cpp
import pytest
from squirrel_models_llama_local import runtime

from .conftest import MakeProvider

AMX_BUILD = ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
             "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
PORTABLE_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | "


def test_the_installed_build_has_no_amx_kernels() -> None:
    # tools/llama_wheel.py builds a portable wheel: a native build on a CPU with AMX crashed
    # every multi-token prompt of SmolLM2 (SIGSEGV in ggml_backend_amx_mul_mat).
    info = llama_cpp.llama_print_system_info().decode()
    assert runtime.amx_warning(info) is None, info


def test_amx_warning_names_the_fix() -> None:
    assert runtime.amx_warning(PORTABLE_BUILD) is None
    warning = runtime.amx_warning(AMX_BUILD)
    assert warning is not None
    assert "AMX" in warning and "-DGGML_NATIVE=OFF" in warning and "--no-cache-dir" in warning


@pytest.mark.anyio
async def test_a_crashing_build_is_reported_once_before_the_first_load(
        make_provider: MakeProvider, tiny_small: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: AMX_BUILD.encode())
    monkeypatch.setattr(runtime, "_build_checked", runtime.threading.Event())
    caplog.set_level(logging.WARNING, logger="squirrel_models_llama_local")
    from squirrel_models import AIRequest

    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    for _ in range(2):
        await p.complete(card, AIRequest.from_prompt("hi", max_tokens=2))
    warnings = [r for r in caplog.records if "AMX" in r.getMessage()]
    assert len(warnings) == 1
