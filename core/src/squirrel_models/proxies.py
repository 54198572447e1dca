"""The proxies the environment names (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``,
lower or upper case): which one a URL goes through, with their passwords registered as secrets.

HTTP libraries quote a proxy's URL in their logs and errors (httpx, httpcore, huggingface_hub),
so a provider whose client reads these variables, or that reads them itself, registers the
password of the URL it may meet with the one redaction point (:mod:`.secrets`) when it is made:
no error, log record or repr shows it. A value without a scheme (``user:pw@proxy.corp:3128``)
is an ``http://`` URL, as every client reads it.

:func:`environment_proxy` is the one reader of the rules, those of curl, requests and httpx:
``https_proxy`` or ``http_proxy`` by the scheme of the URL, else ``all_proxy``; a lower-case
variable wins over its upper-case twin. ``no_proxy`` is a list separated by commas (or spaces)
of entries that each turn the proxy off for the hosts they cover (:func:`bypasses`):

- ``*``: every host;
- a name (``example.com``, ``.example.com`` or ``*.example.com``): that host and its
  subdomains, compared without case;
- an IP address (``127.0.0.1``, ``::1``, ``[::1]``) or a CIDR range (``10.0.0.0/8``,
  ``fd00::/8``): hosts written as addresses in it, compared as addresses (``::1`` matches
  ``[0:0::1]``); a name is never resolved to compare it;
- any of these with ``:port`` (``example.com:8080``, ``127.0.0.1:8080``, ``[::1]:8080``): only
  that port (the URL's own, or 80/443 by its scheme).

Entries that match nothing (``[bad``, ``10.0.0.0/99``) are ignored, as curl and httpx do.

:func:`proxy_refused` and :func:`untrusted_certificate` are the errors plugins raise for a proxy
that refuses a request or a ``CONNECT``, and for a server (or a TLS-inspecting proxy) whose
certificate no trusted CA signed: the fix is ``SSL_CERT_FILE`` naming that CA's certificate,
which :func:`check_ca_environment` checks when a provider is made.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import threading
import urllib.request
from urllib.parse import urlsplit

from .errors import ConfigError, ProviderConnectionError, shown
from .fieldchecks import number_problem
from .secrets import register

__all__ = ["PROXY_VARIABLES", "bypasses", "check_ca_environment", "environment_proxy", "proxy_refused",
           "proxy_url", "register_environment_proxies", "untrusted_certificate", "verify_context"]

#: The variables HTTP clients read for a proxy (httpx, urllib, requests, curl, aiohttp), each
#: in lower and upper case.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_url(value: str) -> str:
    """``value``, a proxy from the environment, as a URL (``http://`` when it names no scheme),
    its password registered as a secret; one that cannot be parsed is registered whole."""
    url = value if "://" in value else f"http://{value}"
    try:
        secret = bool(urlsplit(url).password)
    except ValueError:  # malformed: a parser's error would quote the rest
        secret = True
    if secret:
        register(url, opaque=False)  # the URL, and the password it holds as written and decoded
    return url


def register_environment_proxies() -> None:
    """Register the password of every proxy URL in the environment (see :data:`PROXY_VARIABLES`),
    for a client that reads the variables itself."""
    for name in PROXY_VARIABLES:
        for variable in (name, name.upper()):
            if value := os.environ.get(variable):
                proxy_url(value)


def _address(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").partition("%")[0])
    except ValueError:
        return None


def _entry(text: str) -> tuple[str | _Network, int | None] | None:
    """One ``no_proxy`` entry as (a name or an IP network, a port or None); None when it is
    malformed."""
    port: int | None = None
    host = text
    if text.startswith("["):  # [v6], [v6]:port, [v6]/prefix
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            return None
        if rest.startswith(":") and number_problem(rest[1:], whole=True) is None:
            port, rest = int(rest[1:]), ""
        host = inside + rest
    elif text.count(":") == 1:  # name:port or v4:port (a v6 address has two colons or more)
        host, _, p = text.partition(":")
        if number_problem(p, whole=True) is not None:  # "²".isdigit(), and int("²") raised
            return None
        port = int(p)
    try:
        return ipaddress.ip_network(host, strict=False), port
    except ValueError:
        pass
    name = host.removeprefix("*").removeprefix(".")
    if not name or not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", name):
        return None
    return name.rstrip("."), port


def bypasses(no_proxy: str, host: str, port: int | None = None) -> bool:
    """Whether the ``no_proxy`` list covers ``host`` (a name or an address, IPv6 with or
    without brackets) at ``port`` (see the module docstring for the rules)."""
    host = host.lower().rstrip(".")
    address = _address(host)
    for raw in re.split(r"[,\s]+", no_proxy.lower()):
        if raw == "*":
            return True
        if not raw or (entry := _entry(raw)) is None:
            continue
        match, entry_port = entry
        if entry_port is not None and entry_port != port:
            continue
        if isinstance(match, str):
            if address is None and (host == match or host.endswith("." + match)):
                return True
        elif address is not None and address.version == match.version and address in match:
            return True
    return False


def _variable(key: str) -> str:
    """The name of the variable read for ``key`` (``https``, ``all``): lower case first."""
    lower = f"{key}_proxy"
    return lower if os.environ.get(lower) else lower.upper()


def environment_proxy(url: str) -> str | None:
    """The URL of the HTTP proxy that requests to ``url`` go through, or None (see the module
    docstring for the rules), its password registered as a secret. Only ``http://`` proxies
    are supported (an ``https://`` target goes through them with ``CONNECT``); another scheme,
    or a URL that cannot be parsed, is a :class:`~squirrel_models.errors.ConfigError` naming the
    variable and never showing its value."""
    from .upstream import endpoint

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    key = parts.scheme if proxies.get(parts.scheme) else "all"
    proxy = proxies.get(key)
    if not proxy:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # not a port: no entry with a port covers it
        port = None
    if parts.hostname and bypasses(proxies.get("no", ""), parts.hostname, port):
        return None
    proxy = proxy_url(proxy)
    try:
        scheme = urlsplit(proxy).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme != "http" or endpoint(proxy) is None:
        register(proxy, opaque=False)
        raise ConfigError(f"must be the URL of an HTTP proxy (http://host:port), the only kind "
                          f"supported; the value is not shown (a {scheme or 'malformed'} URL)",
                          field=f"environment variable {_variable(key)}")
    return proxy


#: CA files already read whole without error, by :func:`_file_identity`. Every provider checks
#: the variable when it is made, and reading a system bundle (200 KB, 150 certificates) takes
#: 20 to 90 ms: a manager of many providers, or a reload, read the same file again each time.
_ca_files_read: set[tuple[str, int, int, int, int, int]] = set()


def _file_identity(path: str) -> tuple[str, int, int, int, int, int] | None:
    """``path`` with its file's device, inode, size and change times: another value as soon as
    the file is written, replaced or moved (so a file broken since is read again), or None
    when it cannot be stat'ed (the read then says why)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def check_ca_environment() -> None:
    """``SSL_CERT_FILE`` (a PEM file of CA certificates) or else ``SSL_CERT_DIR`` (a folder of
    them), when set, must be what they say: a :class:`ConfigError` naming the variable at
    start-up. The HTTP clients read them when they make their TLS context, so a missing file
    was a ``FileNotFoundError`` at the first request, not an error of the configuration."""
    if path := os.environ.get("SSL_CERT_FILE"):
        try:
            seen = _file_identity(path)
            if seen is None or seen not in _ca_files_read:
                ssl.create_default_context(cafile=path)
                if seen is not None:
                    _ca_files_read.add(seen)
        except (OSError, ssl.SSLError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
            raise ConfigError(f"must name a PEM file of CA certificates; {shown(path, 200)}: {why}",
                              field="environment variable SSL_CERT_FILE") from None
    elif (path := os.environ.get("SSL_CERT_DIR")) and not os.path.isdir(path):
        raise ConfigError(f"must name a folder of CA certificates; {shown(path, 200)} is none",
                          field="environment variable SSL_CERT_DIR")


#: Verifying TLS contexts by the CA file they trust (:func:`_file_identity`), for
#: :func:`verify_context`. A handful at most: one per CA file a process has been pointed at.
_contexts: dict[tuple[str, int, int, int, int, int], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def verify_context() -> ssl.SSLContext:
    """httpx's verifying TLS context for this environment (``SSL_CERT_FILE``, else
    ``SSL_CERT_DIR``, else certifi's bundle, read as ``httpx.create_ssl_context()`` reads
    them), made once per CA file while that file is unchanged. Making one parses the whole
    bundle, 50-90 ms of CPU for the system's, and every provider made one: a manager of many
    providers, a reload, or a test suite making hundreds, paid it each time. One context
    serves any number of clients and threads (nothing here changes it after it is made). A
    folder (``SSL_CERT_DIR``) is read by OpenSSL at each handshake, so its context is cheap
    and made each time; so is one whose file cannot be stat'ed (the read then says why)."""
    import httpx

    if path := os.environ.get("SSL_CERT_FILE"):
        key = _file_identity(path)
    elif os.environ.get("SSL_CERT_DIR"):
        key = None
    else:
        import certifi  # httpx's own dependency, its default bundle

        key = _file_identity(certifi.where())
    if key is None:
        return httpx.create_ssl_context()
    with _contexts_lock:
        context = _contexts.get(key)
    if context is None:
        context = httpx.create_ssl_context()  # outside the lock: another thread may make one too
        with _contexts_lock:
            if len(_contexts) >= 16:  # files come and go (tests write many): keep a few
                _contexts.clear()
            context = _contexts.setdefault(key, context)
    return context


# --- errors on the way: the proxy's refusal, a certificate not trusted ----------------------

def proxy_refused(status: int) -> ProviderConnectionError:
    """The proxy answered ``status`` to a request or to the ``CONNECT`` of an https:// target."""
    if status == 407:
        return ProviderConnectionError("the proxy refused the request: HTTP 407 Proxy Authentication "
                                       "Required (check the user and password in the proxy variable)")
    return ProviderConnectionError(f"the proxy refused the tunnel: HTTP {status}")


def untrusted_certificate(exc: BaseException) -> ProviderConnectionError | None:
    """The error for a TLS certificate that failed verification somewhere in ``exc``'s chain
    (httpx and aiohttp both keep :class:`ssl.SSLCertVerificationError` there), or None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "certificate_error", None)  # aiohttp's, itself a CertificateError
        if isinstance(inner, ssl.SSLCertVerificationError):
            cause = inner
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = str(getattr(cause, "verify_message", None) or "verification failed")[:120]
            return ProviderConnectionError(
                f"the server's TLS certificate could not be verified ({why}): behind a "
                "TLS-inspecting proxy, name its CA certificate in SSL_CERT_FILE")
        cause = cause.__cause__ or cause.__context__
    return None
