"""Fixtures of the openai plugin's tests: the real llama.cpp server, the faulty server and a
canary API key that must never leak."""

from __future__ import annotations

import pytest
from squirrel_models_openai import _aiohttp_below

from ..support import secret_scanner
from ..support.canary import canary_env_fixture
from ..support.faulty_server import faulty_fixtures
from ..support.httpx_generators import ignore_unclosed_httpx_generators
from ..support.llama_server import llama_server_fixture
from ..support.models import smollm2_path

LLAMA_KEY = "sk-llama-test-key-4f1c"
#: The key the provider sends to the faulty server; tests search for it everywhere.
CANARY = secret_scanner.canary("sk-oai-9d3e7a1b5c2f4e6a8b0c")
CANARY_ENV = "SQUIRREL_TEST_OPENAI_CANARY"

llama_server = llama_server_fixture(smollm2_path, alias="smollm2", api_key=LLAMA_KEY)


faulty_session, faulty = faulty_fixtures(models=("ok", "no-usage"))
canary_env = canary_env_fixture(CANARY_ENV, CANARY, SQUIRREL_TEST_LLAMA_KEY=LLAMA_KEY)


def through_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp engines made after this go through their ``ClientSession``, as on an aiohttp
    release whose internals were not checked (the engine's fallback)."""
    monkeypatch.setattr(_aiohttp_below, "below_session_supported", lambda: False)


@pytest.fixture(params=["aiohttp below", "aiohttp through", "httpx"])
def transport(request: pytest.FixtureRequest, anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each engine and path: aiohttp below its session and through it (asyncio only), httpx;
    the value is the provider's ``transport`` option."""
    if request.param != "httpx":
        if anyio_backend != "asyncio":
            pytest.skip("aiohttp runs only under asyncio")
        if request.param == "aiohttp through":
            through_the_session(monkeypatch)
        elif not _aiohttp_below.below_session_supported():
            pytest.skip("this aiohttp is driven through the session")
        return "aiohttp"
    return "httpx"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ignore_unclosed_httpx_generators(items, __file__)
