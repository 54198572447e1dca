"""The llama.cpp build the tests (and the demo) run: one known to crash is never used; a user
running one (what ``pip install`` compiles on a CPU with AMX) gets models loaded without the
kernels that crash, and the reason logged once."""

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


def pretend_build(monkeypatch: pytest.MonkeyPatch, system_info: str) -> None:
    """The plugin reads ``system_info`` as the loaded build's, afresh (restored after the test)."""
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: system_info.encode())
    monkeypatch.setattr(runtime, "_build_checked", runtime.threading.Event())
    monkeypatch.setattr(runtime, "_plain_buffers", False, raising=False)


@pytest.mark.anyio
async def test_a_crashing_build_is_reported_once_before_the_first_load(
        make_provider: MakeProvider, tiny_small: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pretend_build(monkeypatch, AMX_BUILD)
    caplog.set_level(logging.INFO, logger="squirrel_models_llama_local")
    from squirrel_models import AIRequest

    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    for _ in range(2):
        await p.complete(card, AIRequest.from_prompt("hi", max_tokens=2))
    reports = [r for r in caplog.records if "AMX" in r.getMessage()]
    assert len(reports) == 1
    # nothing is left for the user to do: not a warning on every command
    assert reports[0].levelno == logging.INFO


@pytest.mark.parametrize(("system_info", "extra_buffers"), [(AMX_BUILD, False), (PORTABLE_BUILD, True)],
                         ids=["amx", "portable"])
def test_an_amx_build_loads_models_without_extra_buffers(
        tiny_small: Path, monkeypatch: pytest.MonkeyPatch, system_info: str, extra_buffers: bool) -> None:
    """ggml's AMX kernels are an extra buffer type: a model loaded with use_extra_bufts off
    never runs them. Checked by hand with a native build on this CI machine's CPU (AMX):
    SmolLM2's first multi-token prompt crashed the process (SIGSEGV, exit 139) before, and
    answered after. Other builds keep them (the repacked weights of Q4_0 models)."""
    from squirrel_models_llama_local import read_gguf_metadata

    pretend_build(monkeypatch, system_info)
    m = runtime.LocalModel("tiny", read_gguf_metadata(tiny_small), runtime.ModelSettings(n_ctx=256))
    try:
        llm = m.acquire()
        assert llm.model_params.use_extra_bufts is extra_buffers
        assert len(llm.tokenize(b"hello", add_bos=False)) > 0
        m.release()
    finally:
        m.close()
    # only that load: llama-cpp-python's defaults are its own again
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True
