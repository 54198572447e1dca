"""Fixtures of the openai plugin's tests: the real llama.cpp server, the faulty server and a
canary API key that must never leak."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support.faulty_server import FaultyServer
from ..support.llama_server import llama_server_fixture
from ..support.models import smollm2_path

LLAMA_KEY = "sk-llama-test-key-4f1c"
#: The key the provider sends to the faulty server; tests search for it everywhere.
CANARY = "sk-canary-9d3e7a1b5c2f4e6a8b0c"
CANARY_ENV = "SQUIRREL_TEST_OPENAI_CANARY"

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
    monkeypatch.setenv("SQUIRREL_TEST_LLAMA_KEY", LLAMA_KEY)
    return CANARY_ENV


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # httpx and httpcore read bodies through nested async generators that nobody acloses
    # when a stream is abandoned early (httpx issues #3686, PR #3777); trio warns when they
    # are collected. Our own generator is closed with aclosing(); theirs are finalized by
    # trio regardless, so this one warning is not an error here.
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:Async generator 'http(x|core)\\..*was garbage collected:ResourceWarning"))
