"""squirrel_models.proxies: a proxy URL from the environment, its password a secret, and the one
reader of which URL goes through which proxy (NO_PROXY with names, addresses, CIDR ranges, ports)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models.errors import ConfigError
from squirrel_models.proxies import (
    PROXY_VARIABLES,
    bypasses,
    check_ca_environment,
    environment_proxy,
    proxy_url,
    register_environment_proxies,
    verify_context,
)
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


# --- NO_PROXY: the entries curl, requests and httpx understand ---------------------------------

@pytest.mark.parametrize(("no_proxy", "url", "bypassed"), [
    ("10.0.0.0/8", "http://10.1.2.3:8080/v1", True),
    ("10.0.0.0/8", "http://11.0.0.1/v1", False),
    ("10.0.0.0/8", "http://10.example.com/v1", False),  # a name is never resolved
    ("192.168.1.7/24", "https://192.168.1.200/v1", True),  # host bits set: the network all the same
    ("::1", "http://[::1]:8080/v1", True),
    ("::1", "http://[0:0:0:0:0:0:0:1]/v1", True),  # compared as addresses, not as text
    ("[::1]", "http://[::1]/v1", True),
    ("[::1]:8080", "http://[::1]:8080/v1", True),
    ("[::1]:8080", "http://[::1]:9090/v1", False),
    ("fd00::/8", "https://[fd12::1]/v1", True),
    ("fd00::/8", "https://[fe80::1]/v1", False),
    ("::1", "http://127.0.0.1/v1", False),
    (".example.com", "https://api.example.com/v1", True),
    (".example.com", "https://example.com/v1", True),
    ("*.example.com", "https://a.b.example.com/v1", True),
    ("example.com", "https://notexample.com/v1", False),
    ("example.com", "https://example.com.evil.net/v1", False),
    ("EXAMPLE.com", "https://API.example.COM/v1", True),
    ("example.com:8443", "https://example.com:8443/v1", True),
    ("example.com:8443", "https://example.com/v1", False),
    ("example.com:443", "https://example.com/v1", True),  # the scheme's port
    ("127.0.0.1:8080", "http://127.0.0.1:8080/v1", True),
    ("127.0.0.1:8080", "http://127.0.0.1:8081/v1", False),
    ("localhost", "http://127.0.0.1/v1", False),
    ("localhost", "http://localhost:1234/v1", True),
    ("*", "https://anything.example/v1", True),
    ("foo.com, *", "http://10.0.0.1/v1", True),
    ("foo.com  bar.com", "https://bar.com/v1", True),  # spaces separate, as in curl
    ("[bad, 10.0.0.0/99, exa mple.com:x, example.com", "https://example.com/v1", True),  # bad entries ignored
    ("[bad, 10.0.0.0/99", "https://10.0.0.1/v1", False),
    ("", "https://example.com/v1", False),
])
def test_no_proxy_entries(monkeypatch: pytest.MonkeyPatch, no_proxy: str, url: str, bypassed: bool) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("ALL_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert environment_proxy(url) == (None if bypassed else "http://proxy.corp:3128")


@settings(max_examples=300, derandomize=True)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 128), st.data())
def test_an_address_is_bypassed_exactly_when_a_range_holds_it(address: object, prefix: int,
                                                              data: st.DataObject) -> None:
    assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    network = ipaddress.ip_network(f"{address}/{min(prefix, address.max_prefixlen)}", strict=False)
    other = data.draw(st.ip_addresses(v=address.version))
    shown = f"[{other.exploded}]" if other.version == 6 else str(other)  # any spelling of it
    assert bypasses(str(network), shown) is (other in network)
    assert bypasses(f"foo.example, {network}", str(other), 443) is (other in network)


_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)  # 0.0.0.0 is an address


@settings(max_examples=200, derandomize=True)
@given(st.lists(_LABEL, min_size=1, max_size=3), st.lists(_LABEL, max_size=2), _LABEL,
       st.sampled_from(["", ".", "*."]))
def test_a_name_covers_itself_and_its_subdomains_only(name: list[str], sub: list[str], glued: str,
                                                      prefix: str) -> None:
    domain = ".".join(name)
    assert bypasses(prefix + domain, ".".join([*sub, domain]))
    assert not bypasses(prefix + domain, glued + domain)  # "notexample.com" is not "example.com"


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=40), st.text(max_size=40), st.none() | st.integers(0, 70_000))
def test_any_no_proxy_value_is_read_without_an_error(no_proxy: str, host: str, port: int | None) -> None:
    assert bypasses(no_proxy, host, port) in (True, False)


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_the_scheme_chooses_the_variable_and_lower_case_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://plain.corp:3128")
    assert environment_proxy("https://api.example.com/v1") is None  # no https_proxy, no all_proxy
    monkeypatch.setenv("HTTPS_PROXY", "http://upper.corp:3128")
    monkeypatch.setenv("https_proxy", "lower.corp:3128")
    assert environment_proxy("https://api.example.com/v1") == "http://lower.corp:3128"
    assert environment_proxy("http://api.example.com/v1") == "http://plain.corp:3128"
    monkeypatch.setenv("no_proxy", "example.com")
    monkeypatch.setenv("NO_PROXY", "other.com")
    assert environment_proxy("https://api.example.com/v1") is None


def test_an_unsupported_proxy_names_its_variable_and_hides_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://who:core-socks-pw-6d1f@proxy.corp:1080")
    with pytest.raises(ConfigError) as info:
        environment_proxy("https://api.example.com/v1")
    assert info.value.field == "environment variable HTTPS_PROXY"
    assert "core-socks-pw-6d1f" not in str(info.value)


@pytest.mark.parametrize("what", ["missing", "no certificates", "a folder", "dir missing"])
def test_a_ca_variable_naming_no_certificates_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                what: str) -> None:
    # The HTTP clients read it at their first request: a FileNotFoundError, no SquirrelError.
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    variable = "SSL_CERT_DIR" if what == "dir missing" else "SSL_CERT_FILE"
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv(variable, str({"missing": tmp_path / "nowhere.pem", "no certificates": tmp_path / "empty.pem",
                                      "a folder": tmp_path, "dir missing": tmp_path / "nowhere"}[what]))
    with pytest.raises(ConfigError) as info:
        check_ca_environment()
    assert info.value.field == f"environment variable {variable}"


def test_a_ca_file_with_certificates_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi  # httpx's own bundle: public CAs, PEM

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    check_ca_environment()


def test_a_ca_file_is_read_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every provider checks the variable when it is made: an unchanged file that read well is
    not read again (a system bundle takes tens of ms), and one written broken since is."""
    import shutil
    import ssl

    import certifi

    bundle = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    reads: list[object] = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda **kw: reads.append(kw) or real(**kw))
    check_ca_environment()
    check_ca_environment()
    assert len(reads) == 1
    bundle.write_text("not a certificate\n")
    with pytest.raises(ConfigError):
        check_ca_environment()
    with pytest.raises(ConfigError):  # a failure is never remembered as a success
        check_ca_environment()
    shutil.copy(certifi.where(), bundle)
    check_ca_environment()
    assert len(reads) == 4


def test_one_verifying_context_per_ca_file_until_it_changes(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every provider took a TLS context of its own, each a parse of the whole bundle: one per
    CA file is made now, and a file written since (or another file, or the default bundle)
    gets its own, so a context never trusts what the environment no longer names."""
    import shutil
    import ssl

    import certifi

    bundle, other = tmp_path / "ca.pem", tmp_path / "other.pem"
    shutil.copy(certifi.where(), bundle)
    shutil.copy(certifi.where(), other)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    first = verify_context()
    assert isinstance(first, ssl.SSLContext) and first.verify_mode == ssl.CERT_REQUIRED
    assert first.check_hostname and verify_context() is first
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    assert verify_context() is not first
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert verify_context() is first
    with bundle.open("a") as f:  # written since: read again
        f.write("\n")
    assert verify_context() is not first
    monkeypatch.delenv("SSL_CERT_FILE")
    default = verify_context()
    assert default is verify_context() and default.get_ca_certs() == first.get_ca_certs()
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # a folder is read at each handshake
    assert verify_context() is not verify_context()
