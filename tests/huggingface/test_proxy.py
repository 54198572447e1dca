"""Proxies through huggingface_hub's own client (httpx with its defaults): requests go through
``HTTP_PROXY``, around it for the hosts of ``NO_PROXY``, and an unreachable proxy is a typed
error that never shows the proxy's password (the rules: the plugin's README)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from squirrel_models import ModelCard, ModelOverride, ProviderConnectionError
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.canary import leaks, texts_of
from ..support.faulty_server import ANSWER, FaultyServer
from ..support.faulty_suite import REQUEST
from ..support.forward_proxy import ForwardProxy
from ..support.ports import free_port
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

PROXY_PASSWORD = "hf-proxy-pw-8d2b6e0c4a"
OK = ModelCard.for_provider("faulty", "ok", provider_type="huggingface")


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy setting of the machine running the tests leaks into these."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


@pytest.fixture
async def make(faulty: FaultyServer, canary_env: str) -> AsyncIterator[Callable[..., HuggingFaceProvider]]:
    made: list[HuggingFaceProvider] = []

    def build(**options: Any) -> HuggingFaceProvider:
        p = HuggingFaceProvider("faulty", HuggingFaceOptions(base_url=faulty.base_url, token_env=CANARY_ENV,
                                                             timeout=5, **options), models=[ModelOverride("ok")])
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


async def test_requests_go_through_http_proxy(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer,
                                              proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    p = make()
    assert (await p.complete(OK, REQUEST)).text == ANSWER
    assert "".join([c.text async for c in p.stream(OK, REQUEST)]) == ANSWER
    assert proxy.seen == [f"{faulty.base_url}/chat/completions"] * 2


async def test_no_proxy_hosts_bypass_the_proxy(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer,
                                               proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert (await make().complete(OK, REQUEST)).text == ANSWER
    assert proxy.seen == [] and faulty.requests == 1


async def test_unreachable_proxy_is_a_connection_error_without_its_password(
        make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://squirrel:{PROXY_PASSWORD}@127.0.0.1:{free_port()}")
    p = make()
    with pytest.raises(ProviderConnectionError) as info:
        await p.complete(OK, REQUEST)
    assert leaks([*texts_of(info.value), repr(p)], PROXY_PASSWORD) == []
    assert faulty.requests == 0
