"""Proxies through huggingface_hub's own client (httpx with its defaults): requests go through
``HTTP_PROXY``, ``https://`` ones through ``HTTPS_PROXY`` in a ``CONNECT`` tunnel to a real TLS
server trusted through ``SSL_CERT_FILE``, around the proxy for the hosts of ``NO_PROXY``
(names, addresses, CIDR ranges); an unreachable or refusing proxy, or an untrusted certificate,
is a typed error; the proxy's password shows in no error, cause, log record or repr (the rules:
the plugin's README)."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from squirrel_models import ConfigError, ModelCard, ModelError, ModelOverride, ProviderConnectionError
from squirrel_models.secrets import redact
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.canary import leaks, texts_of
from ..support.faulty_server import ANSWER, FaultyServer
from ..support.faulty_suite import REQUEST
from ..support.forward_proxy import ForwardProxy
from ..support.ports import closed_port
from ..support.tls import ca_file
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
        options.setdefault("base_url", faulty.base_url)
        p = HuggingFaceProvider("faulty", HuggingFaceOptions(token_env=CANARY_ENV, timeout=5, **options),
                                models=[ModelOverride("ok")])
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
        port = refuser.port if refusing else closed_port()
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
    monkeypatch.setenv("HTTP_PROXY", f"http://squirrel:{PROXY_PASSWORD}@127.0.0.1:{closed_port()}")
    p = make()
    with pytest.raises(ProviderConnectionError) as info:
        await p.complete(OK, REQUEST)
    assert leaks([*texts_of(info.value), repr(p)], PROXY_PASSWORD) == []
    assert faulty.requests == 0


async def test_a_refusing_proxy_is_a_connection_error_naming_407(
        make: Callable[..., HuggingFaceProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was an InvalidRequestError ("HTTP 407"): a request fault, where the proxy's user and
    # password are what is wrong.
    with ForwardProxy(credentials=("squirrel", "another-pw-5e1c")) as refuser:
        monkeypatch.setenv("HTTP_PROXY", f"http://squirrel:{PROXY_PASSWORD}@127.0.0.1:{refuser.port}")
        with pytest.raises(ProviderConnectionError, match="407 Proxy Authentication Required"):
            await make().complete(OK, REQUEST)
    assert faulty.requests == 0


# --- https:// targets: CONNECT tunnels, a real TLS server, a custom CA ---------------------------

async def test_https_goes_through_a_connect_tunnel(make: Callable[..., HuggingFaceProvider], https: FaultyServer,
                                                   proxy: ForwardProxy, trusted: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")  # for http:// only
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    p = make(base_url=https.base_url)
    assert (await p.complete(OK, REQUEST)).text == ANSWER
    assert "".join([c.text async for c in p.stream(OK, REQUEST)]) == ANSWER
    assert proxy.seen and set(proxy.seen) == {f"127.0.0.1:{https.port}"}
    assert https.requests == 2


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1:{port}", "::1, 127.0.0.1/32"])
async def test_no_proxy_ranges_bypass_the_proxy_for_https(
        make: Callable[..., HuggingFaceProvider], https: FaultyServer, proxy: ForwardProxy, trusted: Path,
        monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=https.port))
    assert (await make(base_url=https.base_url).complete(OK, REQUEST)).text == ANSWER
    assert proxy.seen == [] and https.requests == 1


async def test_connect_credentials_are_sent_and_a_407_never_shows_them(
        make: Callable[..., HuggingFaceProvider], https: FaultyServer, trusted: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with ForwardProxy(credentials=("squirrel", PROXY_PASSWORD)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://squirrel:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}")
        assert (await make(base_url=https.base_url).complete(OK, REQUEST)).text == ANSWER
        assert proxy.auth_seen == ["Basic " + base64.b64encode(f"squirrel:{PROXY_PASSWORD}".encode()).decode()]
        monkeypatch.setenv("HTTPS_PROXY", f"http://squirrel:wrong-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}")
        p = make(base_url=https.base_url)
        with pytest.raises(ProviderConnectionError, match="407") as info:
            await p.complete(OK, REQUEST)
    records = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert leaks([*texts_of(info.value), repr(p), repr(info.value), *records], PROXY_PASSWORD) == []
    assert https.requests == 1


async def test_an_untrusted_certificate_is_a_connection_error(
        make: Callable[..., HuggingFaceProvider], https: FaultyServer, proxy: ForwardProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS-inspecting proxy's certificate whose CA is not the one ``SSL_CERT_FILE`` names."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file(tmp_path, trustme.CA())))  # another CA
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(ProviderConnectionError, match="TLS certificate could not be verified") as info:
        await make(base_url=https.base_url).complete(OK, REQUEST)
    assert "SSL_CERT_FILE" in str(info.value)
    assert proxy.seen == [f"127.0.0.1:{https.port}"] and https.requests == 0


async def test_a_missing_ca_file_fails_at_start_up(make: Callable[..., Any], https: FaultyServer,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was a FileNotFoundError at the first request, no SquirrelError (the other bad files:
    # tests/core/test_proxies.py).
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(ConfigError, match="environment variable SSL_CERT_FILE"):
        make(base_url=https.base_url)
