"""The pooled HTTP client of a provider, behind one small boundary with two engines.

- ``aiohttp`` (asyncio only; the default there): an ``aiohttp.ClientSession`` driven
  directly. httpx's API over aiohttp (``httpx-aiohttp``) cost 130-175 µs a request in httpx
  ``Request``/``Response`` objects alone; this engine skips them. Its POSTs (answers and
  streams) go below the session, on its connector, where the installed aiohttp is one whose
  ``ClientSession._request`` was read (:mod:`._aiohttp_below`: about 17 µs a request less),
  and through the session elsewhere, through a proxy, and for GETs. On those releases its
  read timeout (each read bounded by ``timeout``) is kept with timers shared by slot of the
  loop's clock, not aiohttp's timer per read (:mod:`._aiohttp_reads`).
- ``httpx``: an ``httpx.AsyncClient`` over httpx's own transport (trio, ``transport =
  "httpx"``, or an injected client in tests). Requests are admitted into it by a semaphore
  of ``max_connections``, FIFO, waited for under the request's cancel scope: httpcore's pool
  rescans every queued request each time one starts or ends (quadratic work with hundreds
  waiting, which held 1,000 concurrent requests for up to 17.6 s past a 4 s deadline, none
  reaching the upstream), so at most as many requests as connections ever enter it, and the
  wait before it ends with the request's deadline.

A call cancelled (by its deadline or its caller) before its request left, waiting for a
connection (httpx: its turn in the admission, or httpcore's connect and TLS handshake;
aiohttp: the connector's pool or its connect), is marked so on the cancellation
(:func:`squirrel_models.unanswered.mark_unsent`): the core charges it nothing, where it
charges a call cut after its request left what ``[budget] charge_unanswered`` says. Decided
on the cancellation's way out only: nothing is recorded per request.

Neither keeps cookies. One pool serves every request to a provider, whoever the caller: a
cookie an upstream sets in answer to one request (a load balancer's or a bot filter's, such as
Cloudflare's ``__cf_bm`` on OpenAI's answers) would otherwise go out with the next requests of
any caller, and the API key, not a cookie, is what authenticates. aiohttp's engine has
``aiohttp.DummyCookieJar`` (which also spares each request a walk of the jar and each answer
the parsing of its ``Set-Cookie``); the httpx client made here has a standard-library jar whose
policy accepts no cookie (``DefaultCookiePolicy(allowed_domains=[])``). An injected httpx
client keeps its own jar. (A ``Cookie`` header is refused among the options' ``headers``.)

Neither reads the environment: the proxy (:mod:`._proxy`, from ``HTTPS_PROXY``/``NO_PROXY``...)
and the TLS context (:func:`squirrel_models.proxies.verify_context`: httpx's, which honours
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, one per CA file in the process) are chosen once by the
provider and given to either engine, so both go the same way; ``~/.netrc`` is never read (the
API key is the one credential sent).

Both expose the few things the provider reads (``status_code``, ``headers``, ``content``,
``aread()``, ``aiter_text()``), and both raise their library's exceptions, which
:func:`squirrel_models_openai._errors.to_model_error` maps the same way. No retries at this
level: the core's fallback chain is the only place that retries, so its bound is the real bound.
Both read a body within the core's bound (:mod:`squirrel_models.answersize`), decoded: an
answer without end, or a compressed one that inflates past it, is a ``MalformedResponse``.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import http.cookiejar
import select
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import CodeType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import httpx
from squirrel_models.answersize import MAX_ANSWER_BYTES, read_bounded
from squirrel_models.errors import ConfigError
from squirrel_models.proxies import verify_context
from squirrel_models.unanswered import mark_unsent, mark_unsent_if_in

from . import _aiohttp_below, _aiohttp_reads
from .options import OpenAIOptions

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpEngine", "Engine", "HttpxEngine", "make_client", "make_engine", "uses_aiohttp"]

#: How long an idle pooled connection is kept: less than the 5 s after which uvicorn (vLLM,
#: llama.cpp's Python server, FastAPI apps, this project's gateway before it kept 75 s) and
#: Node close an idle connection. At httpx's default of 5 s, the same as theirs, a request
#: sent just as the server closed the connection met the close (a connection error that
#: may have been sent: charged, retried or fallen back from, though the server never read it).
KEEPALIVE_S = 4.0


class Reply(Protocol):
    """What the provider reads of an answer (a subset of ``httpx.Response``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    async def aread(self) -> bytes: ...

    def aiter_text(self) -> AsyncIterator[str]: ...


class Engine(Protocol):
    """One provider's connection pool."""

    name: str

    async def post(self, url: str, body: bytes) -> Reply: ...

    async def get(self, url: str) -> Reply: ...

    def stream(self, url: str, body: bytes) -> AbstractAsyncContextManager[Reply]: ...

    async def aclose(self) -> None: ...


def uses_aiohttp(transport: str, library: str) -> bool:
    """Whether a client made under ``library`` (sniffio's name) uses the aiohttp engine."""
    if transport == "httpx":
        return False
    if library != "asyncio":
        if transport == "aiohttp":
            raise ConfigError(f"aiohttp runs only under asyncio, not {library}: use auto or httpx",
                              field="transport")
        return False
    if transport == "auto":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return False
    return True


class _Read:
    """An answer read whole (within the bound), seen through the :class:`Reply` surface."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    async def aread(self) -> bytes:
        return self.content

    async def aiter_text(self) -> AsyncIterator[str]:
        yield self.content.decode("utf-8", "replace")


# --- httpx -----------------------------------------------------------------------------------


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps none: its policy allows no domain (see the module docstring)."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def make_client(options: OpenAIOptions, headers: Mapping[str, str],
                tls: ssl.SSLContext | None = None, proxy: str | None = None) -> httpx.AsyncClient:
    """An httpx client for ``options.base_url`` whose pool keeps ``max_connections`` alive;
    ``tls``: the TLS context to verify with (else the shared :func:`verify_context`);
    ``proxy``: the URL of the HTTP proxy to go through, if any."""
    limits = httpx.Limits(max_connections=options.max_connections,
                          max_keepalive_connections=options.max_connections, keepalive_expiry=KEEPALIVE_S)
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(limits=limits, retries=0,
                                           verify=tls if tls is not None else verify_context(),
                                           proxy=proxy),
        headers=dict(headers),
        trust_env=False,  # the environment is read once, by the provider (see the module docstring)
        cookies=_no_cookies(),
        timeout=httpx.Timeout(options.timeout, connect=options.connect_timeout),
        follow_redirects=False,
    )


class HttpxEngine:
    """An ``httpx.AsyncClient``. ``headers``/``timeout`` go with each request (an injected
    client has its own defaults); ``owned``: closed by :meth:`aclose`. At most
    ``max_connections`` requests (streams until closed) are inside the client at once; the
    others wait their turn, first come first served, for as long as their cancel scope lets
    them (see the module docstring)."""

    name = "httpx"

    def __init__(self, client: httpx.AsyncClient, headers: Mapping[str, str] | None, timeout: Any,
                 *, owned: bool, max_connections: int) -> None:
        self.client, self._owned, self._timeout = client, owned, timeout
        self._headers = dict(headers) if headers is not None else None
        self._stream_headers = {**(headers or {}), "Accept": "text/event-stream"}
        self._urls: dict[str, httpx.URL] = {}
        self._max_connections = max_connections
        self._admission: anyio.Semaphore | None = None  # made in the event loop, on first use

    def _admit(self) -> anyio.Semaphore:
        sem = self._admission
        if sem is None:
            # fast_acquire: no extra trip through the event loop when a slot is free.
            sem = self._admission = anyio.Semaphore(self._max_connections, fast_acquire=True)
        return sem

    def _url(self, url: str) -> httpx.URL:
        # Parsed once: httpx re-parses a str URL on every request (tens of microseconds).
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def post(self, url: str, body: bytes) -> Reply:
        return await self._read("POST", url, body)

    async def get(self, url: str) -> Reply:
        return await self._read("GET", url, None)

    async def _read(self, method: str, url: str, body: bytes | None) -> Reply:
        admission = self._admit()
        try:
            await admission.acquire()
        except anyio.get_cancelled_exc_class() as cut:
            mark_unsent(cut)  # cut while waiting for a connection: the request never left
            raise
        try:
            # Streamed and read within the bound: client.post() reads a body of any size.
            async with self.client.stream(method, self._url(url), content=body, headers=self._headers,
                                          timeout=self._timeout) as resp:
                return _Read(resp.status_code, resp.headers, await read_bounded(resp.aiter_bytes()))
        except BaseException as exc:
            _unsent_if_connecting_httpx(exc)
            raise
        finally:
            admission.release()

    @asynccontextmanager
    async def stream(self, url: str, body: bytes) -> AsyncIterator[Reply]:
        admission = self._admit()
        try:
            await admission.acquire()
        except anyio.get_cancelled_exc_class() as cut:
            mark_unsent(cut)  # (as in _read)
            raise
        try:
            async with self.client.stream("POST", self._url(url), content=body,
                                          headers=self._stream_headers, timeout=self._timeout) as resp:
                yield _HttpxStream(resp)
        except BaseException as exc:
            _unsent_if_connecting_httpx(exc)  # (a cut thrown in at the yield is not in a connect)
            raise
        finally:
            admission.release()

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


@functools.cache
def _httpcore_connect() -> CodeType | None:
    """The code of httpcore's ``AsyncHTTPConnection._connect``: the TCP connect and TLS
    handshake of a new connection (to the server, or to the proxy), before any byte of a
    request is written. Not httpcore's public API (read in httpcore 1.0, where
    ``handle_async_request`` makes a connection there); None where a release has none, and a
    cancellation there is then charged as one that may have left, as before."""
    import httpcore

    return getattr(getattr(getattr(httpcore, "AsyncHTTPConnection", None), "_connect", None), "__code__", None)


def _unsent_if_connecting_httpx(exc: BaseException) -> None:
    """Mark a cancellation raised while httpcore made a new connection as cutting a request
    that never left (:func:`squirrel_models.unanswered.mark_unsent_if_in`): read from the
    traceback, on the way out only, like :func:`_unsent_if_connecting`. Under trio, httpcore
    connects with ``trio.open_tcp_stream``, whose nursery hands the cancellation out in an
    exception group: its cancellation is marked (the core takes such a group for the
    cancellation it holds). Any other exception is left as it is."""
    mark_unsent_if_in(exc, (_httpcore_connect(),))


class _HttpxStream:
    """A streamed httpx answer whose :meth:`aread` keeps within the bound."""

    __slots__ = ("_resp", "content", "headers", "status_code")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp, self.status_code, self.headers = resp, resp.status_code, resp.headers
        self.content = b""

    async def aread(self) -> bytes:
        self.content = await read_bounded(self._resp.aiter_bytes())
        return self.content

    def aiter_text(self) -> AsyncIterator[str]:
        return self._resp.aiter_text()


# --- aiohttp ---------------------------------------------------------------------------------


class _AiohttpReply:
    """An aiohttp response seen through the :class:`Reply` surface."""

    __slots__ = ("_resp", "content", "headers", "status_code")

    def __init__(self, resp: aiohttp.ClientResponse, content: bytes = b"") -> None:
        self._resp = resp
        self.status_code: int = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.content = content

    async def aread(self) -> bytes:
        self.content = await _aiohttp_body(self._resp)
        return self.content

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder(self._resp.charset or "utf-8")(errors="replace")
        async for data in self._resp.content.iter_any():
            text = decoder.decode(data)
            if text:
                yield text
        text = decoder.decode(b"", final=True)
        if text:
            yield text


def _unsent_if_connecting(cut: BaseException) -> None:
    """Mark a cancellation raised inside the connector's ``connect`` (waiting for a free
    connection in the pool, or making a new one) as cutting a request that never left
    (:func:`squirrel_models.unanswered.mark_unsent_if_in`): no byte of it is written before
    ``connect`` returns, on either path (below the session or through it). Read from the
    traceback, on the cancellation's way out only: a flag set as each request got its
    connection cost 3% of a request's CPU. A release whose connector waits elsewhere leaves
    the cancellation unmarked: charged as a request that may have left."""
    import aiohttp

    mark_unsent_if_in(cut, (aiohttp.BaseConnector.connect.__code__,))


def _peer_spoke(proto: Any) -> bool:
    """Whether the socket of an idle pooled connection has something to read: the server
    closed it (a FIN or a reset) or wrote on it, either way it will not answer a request
    (see :func:`_checked_connector`). A poll of the socket, about 1 us."""
    transport = proto.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed under us
        return True


@functools.cache
def _checked_connector() -> type[aiohttp.TCPConnector]:
    """aiohttp's ``TCPConnector`` whose ``connect`` (the one both paths, below the session and
    through it, take a connection by) polls the socket of a connection it takes from the pool
    before handing it out, and closes it for the next one if the server closed it. aiohttp
    checks only that the transport is not closing, which it is once the event loop has read
    the server's FIN: a loop busy since the FIN arrived (a gateway under load) handed out a
    connection the server had closed, and the request written on it failed as a connection
    error that may have been sent (charged, retried or fallen back from). httpcore polls its
    socket the same way before reusing a connection (``has_expired``). A connection made for
    the request is not polled (a TLS 1.3 server may send its session tickets on it first).

    This closes the race with a close the client can see. One it cannot see remains: the
    server's FIN still on its way as the request is written meets the request, and that is
    charged as a request that may have been sent, since nothing the client sees tells it
    from a server that read the request and died (see ``docs/concepts.md``)."""
    import weakref

    import aiohttp

    class CheckedConnector(aiohttp.TCPConnector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._handed_out: weakref.WeakSet[Any] = weakref.WeakSet()

        async def connect(self, *args: Any, **kwargs: Any) -> Any:
            while True:
                conn = await super().connect(*args, **kwargs)
                proto = conn.protocol
                if proto is None or proto not in self._handed_out:
                    if proto is not None:
                        self._handed_out.add(proto)
                    return conn  # made now: not polled
                if not _peer_spoke(proto):
                    return conn
                conn.close()  # the server closed it: the next one, or a new one

    return CheckedConnector


async def _aiohttp_body(resp: aiohttp.ClientResponse) -> bytes:
    """The body of ``resp`` within the bound: at once when its length is said, within the
    bound and not compressed (the parser reads no more than that), else as it comes."""
    length = resp.content_length
    if length is not None and length <= MAX_ANSWER_BYTES and "Content-Encoding" not in resp.headers:
        return await resp.read()
    return await read_bounded(resp.content.iter_any())


class AiohttpEngine:
    """An ``aiohttp.ClientSession`` with the same pool size, timeouts, TLS settings and
    headers as the httpx engine: read, write and pool waits bounded by ``timeout``, connects
    by ``connect_timeout``; no redirects; ``proxy``, if any (``trust_env`` stays off: it would
    read ``~/.netrc`` on each request, see the module docstring)."""

    name = "aiohttp"

    def __init__(self, options: OpenAIOptions, headers: Mapping[str, str],
                 tls: ssl.SSLContext | None = None, proxy: str | None = None) -> None:
        import aiohttp

        connector = _checked_connector()(limit=options.max_connections, keepalive_timeout=KEEPALIVE_S,
                                         ssl=tls if tls is not None else verify_context())
        self.session = aiohttp.ClientSession(
            connector=connector, trust_env=False, proxy=proxy,
            # The session's default headers (aiohttp makes them a CIMultiDict once): a request
            # that brings none is sent with a copy, where a dict of headers per request was
            # converted and merged each time (about 3 us a request here).
            headers=headers,
            # No cookies kept (see the module docstring).
            cookie_jar=aiohttp.DummyCookieJar(),
            # One ClientTimeout for the session's life: per-request objects would be rebuilt.
            timeout=aiohttp.ClientTimeout(total=None, connect=options.timeout,
                                          sock_connect=options.connect_timeout,
                                          sock_read=options.timeout))
        # The read timeout (sock_read) kept with timers shared by slot, not one per read,
        # where aiohttp is a release whose read timer was read (see _aiohttp_reads).
        _aiohttp_reads.install(connector, asyncio.get_running_loop(), options.timeout)
        # The one header a stream changes, merged over the session's by aiohttp.
        self._stream_headers = {"Accept": "text/event-stream"}
        self._payload = aiohttp.BytesPayload
        self._urls: dict[str, Any] = {}
        # POSTs go below the session where this aiohttp is one we read (see _aiohttp_below);
        # through a proxy, the session's path (its CONNECT and proxy headers) is kept.
        self._below = (_aiohttp_below.Below(self.session, headers)
                       if proxy is None and _aiohttp_below.below_session_supported() else None)

    def _url(self, url: str) -> Any:
        parsed = self._urls.get(url)
        if parsed is None:
            from yarl import URL

            parsed = self._urls[url] = URL(url)
        return parsed

    async def post(self, url: str, body: bytes) -> Reply:
        try:
            if self._below is not None:
                async with await self._below.send(self._url(url), self._payload(body), stream=False) as resp:
                    return _AiohttpReply(resp, await _aiohttp_body(resp))
            # A payload object given as it is skips aiohttp's lookup of a payload type for bytes.
            async with self.session.post(self._url(url), data=self._payload(body),
                                         allow_redirects=False) as resp:
                return _AiohttpReply(resp, await _aiohttp_body(resp))
        except asyncio.CancelledError as cut:
            _unsent_if_connecting(cut)
            raise

    async def get(self, url: str) -> Reply:
        async with self.session.get(self._url(url), allow_redirects=False) as resp:
            return _AiohttpReply(resp, await _aiohttp_body(resp))

    @asynccontextmanager
    async def stream(self, url: str, body: bytes) -> AsyncIterator[Reply]:
        try:
            if self._below is not None:
                async with await self._below.send(self._url(url), self._payload(body), stream=True) as resp:
                    yield _AiohttpReply(resp)
                return
            async with self.session.post(self._url(url), data=self._payload(body),
                                         headers=self._stream_headers, allow_redirects=False) as resp:
                yield _AiohttpReply(resp)
        except asyncio.CancelledError as cut:
            _unsent_if_connecting(cut)
            raise

    async def aclose(self) -> None:
        await self.session.close()


def make_engine(options: OpenAIOptions, headers: Mapping[str, str], library: str,
                tls: ssl.SSLContext | None = None, proxy: str | None = None) -> Engine:
    """The engine for ``options.transport`` under ``library`` (see the module docstring),
    verifying TLS with ``tls`` (else the shared :func:`verify_context`), through
    ``proxy`` when given."""
    if uses_aiohttp(options.transport, library):
        return AiohttpEngine(options, headers, tls, proxy)
    return HttpxEngine(make_client(options, headers, tls, proxy), None, httpx.USE_CLIENT_DEFAULT, owned=True,
                       max_connections=options.max_connections)
