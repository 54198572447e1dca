"""The gateway's access log (``[gateway] access_log = true``): one line per request, in
uvicorn's format, that never carries what a client put in the URL beside the route.

uvicorn's own access log writes the path with its query string as the client sent it, so a
client that puts its key there (``?api_key=sk-...``, ``?key=``) would have it logged, and the
gateway cannot know such a key to redact it (it holds only the hashes of its own keys). Here
the query string is never shown (``?***``), a path the gateway does not serve is shown as
``(unknown path)`` (a key pasted into the URL itself), and a method that is not a standard
one as ``(other method)``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import click
from squirrel_models.secrets import redact

__all__ = ["ACCESS_LOGGER", "METHODS", "AccessLog", "log_to_stderr", "silence_uvicorn_access"]

#: The logger of the access lines (INFO).
ACCESS_LOGGER = "squirrel_models.gateway.access"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(ACCESS_LOGGER)


class AccessLog:
    """ASGI middleware: after each HTTP response starts, one INFO line
    ``client - "METHOD /path?*** HTTP/1.1" status``, with only the ``paths`` served shown."""

    def __init__(self, app: App, paths: Iterable[str]) -> None:
        self.app = app
        self.paths = frozenset(p for p in paths if "{" not in p)
        #: routes with a parameter (``/v1/models/{model:path}``): shown as ``/v1/models/{model}``,
        #: never with what the client put there
        self.templates = tuple((p.split("{", 1)[0], p.split(":", 1)[0].rstrip("}") + "}")
                               for p in paths if "{" in p)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_and_log(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                log.info('%s - "%s %s HTTP/%s" %d', _client(scope), _method(scope),
                         self.shown_path(scope), scope.get("http_version", "1.1"),
                         message["status"])
            await send(message)

        await self.app(scope, receive, send_and_log)

    def shown_path(self, scope: Scope) -> str:
        path = scope.get("path", "")
        shown = path if path in self.paths else next(
            (template for prefix, template in self.templates
             if path.startswith(prefix) and len(path) > len(prefix)), "(unknown path)")
        return shown + "?***" if scope.get("query_string") else shown


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _method(scope: Scope) -> str:
    method = scope.get("method", "")
    return method if method in METHODS else "(other method)"


class _Silenced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def silence_uvicorn_access() -> None:
    """Drop uvicorn's own access lines, which show the raw path and query string. Its
    ``access_log = False`` is not enough: it only empties the ``uvicorn.access`` logger at
    start, and uvicorn writes the line whenever that logger has a handler, so a logging
    configuration that adds one later (``dictConfig`` naming ``uvicorn.access``, pytest's log
    capture) turned it back on. A filter on the logger itself holds whatever the handlers."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _Silenced) for f in logger.filters):
        logger.addFilter(_Silenced())


class _Echo(logging.Handler):
    """Access lines on the current standard error (the CLI's redacting stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"info: {redact(record.getMessage())}", err=True)
        except Exception:  # a log line must never break a request
            self.handleError(record)


def log_to_stderr() -> None:
    """Print the access lines on standard error whatever level the command chose (``squirrel
    serve`` without ``-v`` prints warnings only: the lines would go nowhere)."""
    if not any(isinstance(h, _Echo) for h in log.handlers):
        log.addHandler(_Echo())
    log.setLevel(logging.INFO)
    log.propagate = False
