"""A POST sent below aiohttp's ``ClientSession``, on a connection from its connector.

``ClientSession._request`` spends about 17 µs of a request's CPU (0.16 of the client's, see
docs/performance.md, "driven below the session") on what this engine never uses: a total
timeout's handle and timer, the redirect and retry loop, the URL's credentials, the cookie jar
(a ``DummyCookieJar`` here), traces, middlewares, proxy settings, the merge of the default
headers into a fresh ``CIMultiDict``, the close of a bytes body (a no-op). :meth:`Below.send`
does the rest of it as ``_request`` does (``_connect_and_send_request``): the same
``ClientRequest`` and ``ClientResponse``, the connector's ``connect`` under the session's
``ClientTimeout`` (pool wait and connect bounded, a timeout raised as
``ConnectionTimeoutError``), the protocol's ``set_response_params`` with the session's read
timeout (``sock_read``), the connection closed when the send or the start of the answer fails
or is cancelled, an ``OSError`` raised as ``ClientOSError``. So the exceptions, and what
:func:`squirrel_models.upstream.request_sent` reads from their chains, are the session's.

``ClientRequest``'s constructor and ``set_response_params`` are not aiohttp's public API (no
public call sends a request on a connection). They are used only where this was read against
aiohttp's source: ``_connect_and_send_request`` is the same in every release from 3.12.0 to
3.14.3 (3.14.5 adds an upload tracker, None here), ``set_response_params`` takes the parameters
given here in all of them (``max_headers`` came in 3.13.4; its default is the session's)
(:data:`VERIFIED`); elsewhere, or when a signature lacks a parameter given here, the engine
goes through the session (:func:`below_session_supported`). Non-idempotent POSTs only: the
session retries an idempotent method once on a dropped kept-alive connection, which this does
not (so GETs keep the session).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

__all__ = ["VERIFIED", "Below", "below_session_supported"]

#: The aiohttp releases whose ``ClientSession._request`` was read: from 3.12 (included) to
#: 3.15 (excluded).
VERIFIED = ((3, 12), (3, 15))


@functools.cache
def below_session_supported() -> bool:
    """Whether the installed aiohttp is one :class:`Below` was checked against, and still
    takes the parameters it is given."""
    import aiohttp

    try:
        # Internals a release may move or drop: then the session it is
        from aiohttp.client_proto import ResponseHandler
        from aiohttp.client_reqrep import ClientRequest, ClientResponse
        from aiohttp.helpers import TimerNoop  # noqa: F401  (present: Below uses it)

        version = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return False
    if not VERIFIED[0] <= version < VERIFIED[1]:
        return False
    response_params = inspect.signature(ResponseHandler.set_response_params).parameters
    request_params = inspect.signature(ClientRequest.__init__).parameters
    return ({"timer", "read_until_eof", "read_timeout"} <= response_params.keys()
            and {"headers", "data", "loop", "session", "timer"} <= request_params.keys()
            and callable(getattr(ClientRequest, "send", None))
            and callable(getattr(ClientResponse, "start", None)))


class Below:
    """Sends one engine's POSTs on its session's connector, with its headers and timeouts."""

    __slots__ = ("_connector", "_errors", "_headers", "_loop", "_request", "_session",
                 "_stream_headers", "_timeout", "_timer")

    def __init__(self, session: aiohttp.ClientSession, headers: Mapping[str, str]) -> None:
        import aiohttp
        from aiohttp.client_reqrep import ClientRequest
        from aiohttp.helpers import TimerNoop
        from multidict import CIMultiDict

        self._session, self._connector, self._timeout = session, session.connector, session.timeout
        self._loop = asyncio.get_running_loop()
        # The session's default headers, and a stream's Accept over them, as its merge makes
        # them; ClientRequest copies what it is given.
        self._headers = CIMultiDict(headers)
        self._stream_headers = CIMultiDict(headers)
        self._stream_headers["Accept"] = "text/event-stream"
        self._timer = TimerNoop()  # the session's timer when it has no total timeout (ours)
        self._request = ClientRequest
        self._errors = (aiohttp.ConnectionTimeoutError, aiohttp.ClientError, aiohttp.ClientOSError)

    async def send(self, url: Any, data: Any, *, stream: bool) -> aiohttp.ClientResponse:
        """The answer to a POST of ``data`` to ``url`` (a ``yarl.URL``), its head read; the
        caller releases it (``async with``), as the session's context manager does."""
        session = self._session
        if session.closed:
            raise RuntimeError("Session is closed")
        req = self._request("POST", url, headers=self._stream_headers if stream else self._headers,
                            data=data, loop=self._loop, session=session, timer=self._timer)
        timeout_error, client_error, os_error = self._errors
        try:
            try:
                conn = await self._connector.connect(req, traces=[], timeout=self._timeout)
            except TimeoutError as exc:
                raise timeout_error(f"Connection timeout to host {req.url}") from exc
            protocol = conn.protocol
            assert protocol is not None
            protocol.set_response_params(timer=self._timer, read_until_eof=True,
                                         read_timeout=self._timeout.sock_read)
            try:
                resp = await req.send(conn)
                try:
                    await resp.start(conn)
                except BaseException:
                    resp.close()
                    raise
            except BaseException:
                conn.close()
                raise
        except client_error:
            raise
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise os_error(*exc.args) from exc
        return resp
