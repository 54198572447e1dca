"""Proxies through huggingface_hub's own client (httpx with its defaults): requests go through
``HTTP_PROXY``, around it for the hosts of ``NO_PROXY``, and an unreachable or refusing proxy is
a typed error; the proxy's password shows in no error, cause, log record or repr (the rules: the
plugin's README)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from squirrel_models import ModelCard, ModelError, ModelOverride, ProviderConnectionError
from squirrel_models.secrets import redact
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


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                      "ALL_PROXY", "all_proxy"])
async def test_a_proxy_password_is_a_secret_once_the_provider_is_made(
        make: Callable[..., HuggingFaceProvider], monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    # huggingface_hub's client reads every one of these itself: whichever it picks, the password
    # it may quote (httpx's logs, an error) is known to the one redaction point.
    password = f"{PROXY_PASSWORD}-{variable}"
    monkeypatch.setenv(variable, f"squirrel:{password}@proxy.example:3128")  # no scheme: http://
    make()
    assert password not in redact(f"proxy http://squirrel:{password}@proxy.example:3128 and {password}")


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "HTTPS_PROXY"])
@pytest.mark.parametrize("refusing", [False, True], ids=["unreachable", "407"])
async def test_a_failing_proxy_shows_its_password_nowhere(
        make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, variable: str, refusing: bool) -> None:
    password = f"{PROXY_PASSWORD}-{variable}-{refusing}"
    with ForwardProxy(credentials=("squirrel", "another-pw-5e1c")) as refuser:
        port = refuser.port if refusing else free_port()
        # Both variables: HTTPS_PROXY alone would not cover the http:// server.
        monkeypatch.setenv(variable, f"http://squirrel:{password}@127.0.0.1:{port}")
        monkeypatch.setenv("ALL_PROXY", f"http://squirrel:{password}@127.0.0.1:{port}")
        caplog.set_level(logging.DEBUG)
        p = make()
        with pytest.raises(ModelError) as info:
            await p.complete(OK, REQUEST)
        if refusing:
            assert refuser.auth_seen, "the request went to the proxy"
    records = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert leaks([*texts_of(info.value), repr(p), repr(info.value), *records], password) == []
    assert faulty.requests == 0


async def test_unreachable_proxy_is_a_connection_error_without_its_password(
        make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://squirrel:{PROXY_PASSWORD}@127.0.0.1:{free_port()}")
    p = make()
    with pytest.raises(ProviderConnectionError) as info:
        await p.complete(OK, REQUEST)
    assert leaks([*texts_of(info.value), repr(p)], PROXY_PASSWORD) == []
    assert faulty.requests == 0
