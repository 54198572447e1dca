"""Fixtures of the huggingface plugin's tests: the real llama.cpp server, the faulty server, a
canary token that must never leak, and a tiny local transformers model built offline."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.faulty_server import FaultyServer
from ..support.llama_server import llama_server_fixture
from ..support.models import smollm2_path

LLAMA_KEY = "sk-llama-test-key-hf-7a2d"
LLAMA_KEY_ENV = "SQUIRREL_TEST_HF_LLAMA_KEY"
#: The token the provider sends to the faulty server; tests search for it everywhere.
CANARY = "hf_canary_5e8b1c9d0a7f3e2b6c4d"
CANARY_ENV = "SQUIRREL_TEST_HF_CANARY"
HAS_LOCAL = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers"))
needs_local = pytest.mark.skipif(
    not HAS_LOCAL, reason="local models need the [local] extra (torch, transformers) and tokenizers")

llama_server = llama_server_fixture(smollm2_path, alias="smollm2", api_key=LLAMA_KEY)


@pytest.fixture(scope="session")
def faulty_session() -> Iterator[FaultyServer]:
    with FaultyServer(models=("ok", "no-usage")) as server:
        yield server


@pytest.fixture
def faulty(faulty_session: FaultyServer) -> FaultyServer:
    """The session's faulty server with fresh counters and no queued scripts."""
    faulty_session._scripts.clear()
    faulty_session.reset_counters()
    return faulty_session


@pytest.fixture
def canary_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(CANARY_ENV, CANARY)
    monkeypatch.setenv(LLAMA_KEY_ENV, LLAMA_KEY)
    return CANARY_ENV


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM model folder (0.5 MB), built once per session."""
    if not HAS_LOCAL:
        pytest.skip("local models need the [local] extra (torch, transformers) and tokenizers")
    from .tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # httpx(2) and httpcore(2) read bodies through nested async generators that nobody
    # acloses when a stream is abandoned early (httpx issues #3686, PR #3777); trio warns when
    # they are collected. Ours are closed; theirs are finalized by trio regardless.
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:Async generator 'http(x|core)2?\\..*was garbage collected:ResourceWarning"))
