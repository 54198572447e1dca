"""huggingface_hub's client, reading answers within the core's bound
(:mod:`squirrel_models.answersize`) as the openai plugin does.

huggingface_hub reads a body whole (``response.content``) and a stream line by line
(``response.aiter_lines()``), each without a bound: a body without end, a length never kept,
a compressed body that inflates a thousandfold or an event line without end grew the process
until the deadline. Its public API takes no HTTP client of its own per instance (only a
process-wide factory, which would change every other user of huggingface_hub in the process),
so :class:`BoundedInferenceClient` adds a response hook to the httpx2 client it makes
(``AsyncInferenceClient._get_async_client``: private, hence the ``<3`` pin). The hook runs
first, before huggingface_hub's own (which reads small error bodies), and gives each answer
:class:`BoundedResponse`'s reads: the decoded body within :data:`MAX_ANSWER_BYTES`, and
event-stream lines split by the core's :class:`~squirrel_models.eventlines.EventLines` (each
within the bound, and ended only where the format ends lines: httpx's ``aiter_lines`` also
ends them at a raw U+2028 inside an event's JSON). Past the bound: ``MalformedResponse``, and
the connection is dropped when the client closes the answer.

The same client's pools give up an idle connection after :data:`KEEPALIVE_S` (4 s), not
httpx2's default of 5 s (:func:`expire_idle`): the same as the 5 s after which uvicorn (vLLM,
llama.cpp's Python server, FastAPI apps) and Node close an idle connection, so a request sent
about 5 s after the last one could go out on a connection the server was closing and fail as
a connection error that may have been sent (charged, retried or fallen back from), though
the server never read it; the openai plugin gives one up after 4 s for the same reason. No
public API sets it on a client made by huggingface_hub's factory: its pools' expiry is
lowered in place (httpx2's ``AsyncClient._transport`` and ``_mounts``, each transport's
``_pool``, httpcore2's ``_keepalive_expiry``), read in httpx2 2.16; where a release has
them elsewhere, the client keeps its own.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from squirrel_models.answersize import read_bounded
from squirrel_models.eventlines import EventLines

__all__ = ["KEEPALIVE_S", "BoundedInferenceClient", "BoundedResponse", "bound_answers", "expire_idle"]

#: How long an idle pooled connection is kept: less than the 5 s of uvicorn and Node (see the
#: module docstring).
KEEPALIVE_S = 4.0


class BoundedResponse(httpx2.Response):
    """An answer whose reads are bounded (see the module docstring)."""

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncGenerator[bytes, None]:
        # Everything that reads the body whole (aread, .content, .json(), .text) comes here.
        body = await read_bounded(super().aiter_bytes(chunk_size))
        yield body

    def aiter_lines(self) -> AsyncGenerator[str, None]:
        # A stream is read by its events, each bounded, not by its whole (streams may be long).
        # huggingface_hub stops at [DONE] without closing the lines: the answer closes them
        # when its client closes it (else they are left to the garbage collector; trio warns).
        lines = self.__dict__["_squirrel_lines"] = self._event_lines()
        return lines

    async def _event_lines(self) -> AsyncGenerator[str, None]:
        try:
            decoder = codecs.getincrementaldecoder(self.encoding or "utf-8")(errors="replace")
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        lines = EventLines()
        async with contextlib.aclosing(super().aiter_bytes()) as chunks:
            async for chunk in chunks:
                for line in lines.feed(decoder.decode(chunk)):
                    yield line
        for line in lines.feed(decoder.decode(b"", final=True)):
            yield line
        if last := lines.close():
            yield last

    async def aclose(self) -> None:
        lines = self.__dict__.get("_squirrel_lines")
        # Running: httpx closing the answer from inside them, at the body's end; the lines
        # left are closed when the client closes the answer again.
        if lines is not None and not lines.ag_running:
            del self.__dict__["_squirrel_lines"]
            await lines.aclose()
        await super().aclose()


async def _bound(response: httpx2.Response) -> None:
    if type(response) is httpx2.Response:
        # The answer the transport made, given the bounded reads: same fields, no slots.
        response.__class__ = BoundedResponse


def bound_answers(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """``client``, its answers read within the core's bound from now on (its own hooks after)."""
    hooks = client.event_hooks
    if _bound not in hooks["response"]:
        client.event_hooks = {"request": hooks["request"], "response": [_bound, *hooks["response"]]}
    return client


def expire_idle(client: httpx2.AsyncClient, seconds: float = KEEPALIVE_S) -> httpx2.AsyncClient:
    """``client``, whose pools give up a connection idle for ``seconds`` (or sooner, if they
    did already), from the next connection they make: call it before the first request."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        expiry = getattr(pool, "_keepalive_expiry", False)
        if expiry is not False and (expiry is None or expiry > seconds):
            pool._keepalive_expiry = seconds  # type: ignore[union-attr]
    return client


class BoundedInferenceClient(AsyncInferenceClient):
    """``AsyncInferenceClient`` whose answers are read within the core's bound, and whose idle
    connections are given up after :data:`KEEPALIVE_S`."""

    async def _get_async_client(self) -> Any:
        client = await super()._get_async_client()
        if _bound not in client.event_hooks["response"]:  # made now: no connection yet
            expire_idle(client)
        return bound_answers(client)
