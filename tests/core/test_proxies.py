"""squirrel_models.proxies: a proxy URL from the environment, its password a secret."""

from __future__ import annotations

import pytest
from squirrel_models.proxies import PROXY_VARIABLES, proxy_url, register_environment_proxies
from squirrel_models.secrets import redact


def test_a_proxy_without_a_scheme_is_http_and_its_password_a_secret() -> None:
    assert proxy_url("who:core-proxy-pw-71c3e9@proxy.corp:3128") == "http://who:core-proxy-pw-71c3e9@proxy.corp:3128"
    assert "core-proxy-pw-71c3e9" not in redact("Proxy failed: core-proxy-pw-71c3e9")
    # URL-encoded as written, decoded as a client sends it: both are secrets.
    proxy_url("http://who:core%2Fproxy%2Fpw-9a4d@proxy.corp:3128")
    assert redact("core/proxy/pw-9a4d and core%2Fproxy%2Fpw-9a4d") == "*** and ***"


def test_a_proxy_without_a_password_registers_nothing() -> None:
    assert proxy_url("http://proxy-host-name-3b7f.corp:3128") == "http://proxy-host-name-3b7f.corp:3128"
    assert redact("via proxy-host-name-3b7f.corp") == "via proxy-host-name-3b7f.corp"


def test_a_malformed_proxy_is_registered_whole() -> None:
    # A bracket that does not close: parsers raise, quoting the value; the password must not show.
    proxy_url("http://who:core-bad-pw-2e8c5a@[proxy.corp:3128")
    assert "core-bad-pw-2e8c5a" not in redact("ValueError: Invalid IPv6 URL core-bad-pw-2e8c5a")


@pytest.mark.parametrize("variable", [v for name in PROXY_VARIABLES for v in (name, name.upper())])
def test_every_proxy_variable_is_read(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    password = f"core-env-pw-{variable}-5f0d"
    monkeypatch.setenv(variable, f"http://who:{password}@proxy.corp:3128")
    register_environment_proxies()
    assert password not in redact(f"httpx: proxy http://who:{password}@proxy.corp:3128")
