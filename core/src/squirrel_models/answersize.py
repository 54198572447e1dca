"""How much of an upstream's answer a provider reads: at most :data:`MAX_ANSWER_BYTES`.

An HTTP client reads a whole body into memory as it comes, however large: an upstream that
answers without end (a base URL pointing at a file server, a proxy's error page looping, a
compressed body that inflates a thousandfold) grew the process by hundreds of megabytes a
request until the deadline, and a few such requests at once ended it. Provider plugins read
bodies through :func:`read_bounded` and bound each server-sent event's line with
:func:`check_event_size`; past the bound the answer is a :class:`MalformedResponse` (a
:class:`ModelError`: the fallback chain decides what follows) and the connection is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from .errors import MalformedResponse

__all__ = ["MAX_ANSWER_BYTES", "check_event_size", "read_bounded"]

#: The most an answer's body (decoded: after any Content-Encoding) or one server-sent event
#: may hold: 64 MiB, far above any chat answer (128 choices of 16,384 tokens with log
#: probabilities fit) and small enough that a few at once leave the process standing.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def _too_large(what: str = "the answer") -> MalformedResponse:
    return MalformedResponse(f"{what} is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB: "
                             "not read further")


async def read_bounded(chunks: AsyncIterable[bytes], what: str = "the answer") -> bytes:
    """The bytes of ``chunks`` (a body as it is decoded), or :class:`MalformedResponse` once
    they pass :data:`MAX_ANSWER_BYTES`."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _too_large(what)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_event_size(size: int) -> None:
    """``size`` characters of one server-sent event (or of a line not yet ended) is within
    :data:`MAX_ANSWER_BYTES`, else :class:`MalformedResponse`."""
    if size > MAX_ANSWER_BYTES:
        raise _too_large("a server-sent event")
