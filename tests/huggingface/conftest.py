"""Fixtures of the huggingface plugin's tests: the real llama.cpp server, the faulty server, a
canary token that must never leak, and a tiny local transformers model built offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ..support import secret_scanner
from ..support.canary import canary_env_fixture
from ..support.faulty_server import faulty_fixtures
from ..support.httpx_generators import ignore_unclosed_httpx_generators
from ..support.llama_server import llama_server_fixture
from ..support.models import smollm2_path

LLAMA_KEY = "sk-llama-test-key-hf-7a2d"
LLAMA_KEY_ENV = "SQUIRREL_TEST_HF_LLAMA_KEY"
#: The token the provider sends to the faulty server; tests search for it everywhere.
CANARY = secret_scanner.canary("hf_Hb5e8b1c9d0a7f3e2b6c4d")
CANARY_ENV = "SQUIRREL_TEST_HF_CANARY"
HAS_LOCAL = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers"))
needs_local = pytest.mark.skipif(
    not HAS_LOCAL, reason="local models need the [local] extra (torch, transformers) and tokenizers")

llama_server = llama_server_fixture(smollm2_path, alias="smollm2", api_key=LLAMA_KEY)


faulty_session, faulty = faulty_fixtures(models=("ok", "no-usage"))
canary_env = canary_env_fixture(CANARY_ENV, CANARY, **{LLAMA_KEY_ENV: LLAMA_KEY})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM model folder (0.5 MB), built once per session."""
    if not HAS_LOCAL:
        pytest.skip("local models need the [local] extra (torch, transformers) and tokenizers")
    from .tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ignore_unclosed_httpx_generators(items, __file__)
