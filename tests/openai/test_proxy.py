"""The environment's proxy settings mean the same under both engines (aiohttp under asyncio,
httpx under trio or ``transport = "httpx"``): requests go through ``HTTP_PROXY``, ``https://``
ones through ``HTTPS_PROXY`` in a ``CONNECT`` tunnel to a real TLS server trusted through
``SSL_CERT_FILE``, around the proxy for the hosts of ``NO_PROXY``; an unreachable or refusing
proxy, or an untrusted certificate, is a typed error that never shows the proxy's password;
``~/.netrc`` adds nothing to the requests."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from squirrel_models import ConfigError, ProviderConnectionError
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.canary import leaks, texts_of
from ..support.faulty_server import ANSWER, FaultyServer
from ..support.faulty_suite import REQUEST
from ..support.forward_proxy import ForwardProxy
from ..support.ports import closed_port
from ..support.tls import ca_file
from .conftest import CANARY, CANARY_ENV
from .mock import card

pytestmark = pytest.mark.anyio

PROXY_USER, PROXY_PASSWORD = "squirrel", "proxy-pw-5e8c1d7a9b"
_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_BASIC = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy setting of the machine running the tests leaks into these."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


@pytest.fixture(params=["httpx", "auto"])  # auto: aiohttp under asyncio, httpx under trio
async def make(request: pytest.FixtureRequest, faulty: FaultyServer, canary_env: str
               ) -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def build(**options: Any) -> OpenAIProvider:
        options.setdefault("base_url", faulty.base_url)
        p = OpenAIProvider("faulty", OpenAIOptions(api_key_env=CANARY_ENV, discover=False, timeout=5,
                                                   transport=request.param, **options))
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


async def test_requests_go_through_http_proxy(make: Callable[..., OpenAIProvider], faulty: FaultyServer,
                                              proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    p = make()
    resp = await p.complete(card("ok", "faulty"), REQUEST)
    chunks = [c.text async for c in p.stream(card("ok", "faulty"), REQUEST)]
    assert resp.text == ANSWER and "".join(chunks) == ANSWER
    assert proxy.seen == [f"{faulty.base_url}/chat/completions"] * 2
    assert faulty.requests == 2
    assert faulty.headers_seen[-1]["authorization"] == f"Bearer {CANARY}"


async def test_lower_case_and_all_proxy_are_read(make: Callable[..., OpenAIProvider], faulty: FaultyServer,
                                                 proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # all_proxy serves any scheme without its own variable; a lower-case variable wins.
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("all_proxy", proxy.url.removeprefix("http://"))  # no scheme: http://
    await make().complete(card("ok", "faulty"), REQUEST)
    assert proxy.seen == [f"{faulty.base_url}/chat/completions"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost, 127.0.0.1", "*", "example.com,127.0.0.1:{port}"])
async def test_no_proxy_hosts_bypass_the_proxy(make: Callable[..., OpenAIProvider], faulty: FaultyServer,
                                               proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch,
                                               no_proxy: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=faulty.port))
    resp = await make().complete(card("ok", "faulty"), REQUEST)
    assert resp.text == ANSWER and faulty.requests == 1
    assert proxy.seen == []


async def test_proxy_credentials_are_sent_and_never_shown(
        make: Callable[..., OpenAIProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@"))
        p = make()
        assert (await p.complete(card("ok", "faulty"), REQUEST)).text == ANSWER
        assert len(proxy.auth_seen) == 1 and proxy.auth_seen[0] is not None
        # A proxy refusing the credentials: the 407 is an error that shows none of them.
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("://", f"://{PROXY_USER}:wrong-{PROXY_PASSWORD}@"))
        p = make()
        with pytest.raises(ProviderConnectionError, match="407") as info:
            await p.complete(card("ok", "faulty"), REQUEST)
    assert f"through the proxy 127.0.0.1:{proxy.port}" in str(info.value)
    assert leaks([*texts_of(info.value), repr(p)], PROXY_PASSWORD) == []
    assert faulty.requests == 1


async def test_unreachable_proxy_is_a_connection_error_without_its_password(
        make: Callable[..., OpenAIProvider], faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}")
    p = make()
    with pytest.raises(ProviderConnectionError) as info:
        await p.complete(card("ok", "faulty"), REQUEST)
    assert f"through the proxy 127.0.0.1:{port}" in str(info.value)
    assert leaks([*texts_of(info.value), repr(p)], PROXY_PASSWORD) == []
    assert faulty.requests == 0


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", f"https://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:3128"],
                         ids=["socks5", "https-with-password"])
async def test_unsupported_proxy_fails_at_start_up_naming_the_variable(
        make: Callable[..., OpenAIProvider], monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("http_proxy", value)
    with pytest.raises(ConfigError, match="environment variable http_proxy") as info:
        make()
    assert leaks(texts_of(info.value), PROXY_PASSWORD) == []


async def test_netrc_adds_no_credentials(make: Callable[..., OpenAIProvider], faulty: FaultyServer,
                                         tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's ``trust_env`` would add a ``.netrc`` entry's login as ``Authorization``: the
    API key is the one credential sent, also with a proxy in the environment."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-pw-3f9a2c\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    await make(api_key_header="api-key").complete(card("ok", "faulty"), REQUEST)
    seen = faulty.headers_seen[-1]
    assert seen["api-key"] == CANARY and "authorization" not in seen


# --- https:// targets: CONNECT tunnels, a real TLS server, a custom CA ---------------------------

async def test_https_goes_through_a_connect_tunnel(make: Callable[..., OpenAIProvider], https: FaultyServer,
                                                   proxy: ForwardProxy, trusted: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")  # for http:// only
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    p = make(base_url=https.base_url)
    resp = await p.complete(card("ok", "faulty"), REQUEST)
    chunks = [c.text async for c in p.stream(card("ok", "faulty"), REQUEST)]
    assert resp.text == ANSWER and "".join(chunks) == ANSWER
    # The proxy saw tunnels to the server, never a request: the key crossed it inside TLS.
    assert proxy.seen and set(proxy.seen) == {f"127.0.0.1:{https.port}"}
    assert https.requests == 2 and https.headers_seen[-1]["authorization"] == f"Bearer {CANARY}"


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1:{port}", "::1, 127.0.0.1/32"])
async def test_no_proxy_ranges_bypass_the_proxy_for_https(make: Callable[..., OpenAIProvider], https: FaultyServer,
                                                          proxy: ForwardProxy, trusted: Path,
                                                          monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    # CIDR ranges were not understood (urllib's rules): the requests went through the proxy.
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=https.port))
    assert (await make(base_url=https.base_url).complete(card("ok", "faulty"), REQUEST)).text == ANSWER
    assert proxy.seen == [] and https.requests == 1


async def test_connect_credentials_are_sent_and_a_407_never_shows_them(
        make: Callable[..., OpenAIProvider], https: FaultyServer, trusted: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@"))
        assert (await make(base_url=https.base_url).complete(card("ok", "faulty"), REQUEST)).text == ANSWER
        assert proxy.auth_seen == [_BASIC]
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("://", f"://{PROXY_USER}:wrong-{PROXY_PASSWORD}@"))
        p = make(base_url=https.base_url)
        with pytest.raises(ProviderConnectionError, match="407") as info:
            await p.complete(card("ok", "faulty"), REQUEST)
    assert f"through the proxy 127.0.0.1:{proxy.port}" in str(info.value)
    records = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert leaks([*texts_of(info.value), repr(p), repr(info.value), *records], PROXY_PASSWORD) == []
    assert https.requests == 1


async def test_an_untrusted_certificate_is_a_connection_error(make: Callable[..., OpenAIProvider],
                                                              https: FaultyServer, proxy: ForwardProxy,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS-inspecting proxy's certificate whose CA is not the one ``SSL_CERT_FILE`` names:
    refused before any request is sent, as a typed error saying so."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file(tmp_path, trustme.CA())))  # another CA
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    p = make(base_url=https.base_url)
    with pytest.raises(ProviderConnectionError, match="TLS certificate could not be verified") as info:
        await p.complete(card("ok", "faulty"), REQUEST)
    assert f"127.0.0.1:{https.port} through the proxy" in str(info.value) and "SSL_CERT_FILE" in str(info.value)
    assert proxy.seen == [f"127.0.0.1:{https.port}"] and https.requests == 0


async def test_a_missing_ca_file_fails_at_start_up(make: Callable[..., Any], https: FaultyServer,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was a FileNotFoundError at the first request, no SquirrelError (the other bad files:
    # tests/core/test_proxies.py).
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(ConfigError, match="environment variable SSL_CERT_FILE"):
        make(base_url=https.base_url)
