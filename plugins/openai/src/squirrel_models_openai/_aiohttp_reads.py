"""aiohttp's read timeout (``sock_read``, the ``timeout`` option) kept with timers shared by
slot of the loop's clock, not one timer per read.

aiohttp's ``ResponseHandler`` bounds each read of an answer with a timer of its own: a
``loop.call_later`` when the request has been sent, and on every read another one, the last
cancelled. An answer that comes in one read makes two timer handles, two pushes on the loop's
heap (each a few comparisons in Python) and two cancels, and the cancelled handles stay in the
heap, holding their objects, until the loop rebuilds it: about 53,000 of the 700,000
instructions of a fast request through the library (docs/performance.md, eleventh pass).

:class:`ReadHandler` keeps the same promise the way the core's deadlines keep theirs
(``squirrel_models.deadline._Slots``). A read's end (when the last bytes came, plus the
timeout) is written in its handler, which sits in the set of one slot of the clock due no
later than that end; one timer per slot, at the slot's start. When a slot is due, a handler
still reading whose end moved on (bytes came since) joins the slot of its new end, and one
whose end is in this slot gets a timer of its own at that end, which calls aiohttp's own
``_on_read_timeout``, as aiohttp's timer would have at that moment. So no read is cut before
its end nor after it; only reads still waiting at their slot's start cost a timer each.

``ResponseHandler`` and the connector's ``_factory`` are not aiohttp's public API. In every
release from 3.12.0 to 3.14.3 (the git tags) and in 3.14.5, the read timer is made in
``_reschedule_timeout`` alone (``call_later(timeout, self._on_read_timeout)`` whenever
``_read_timeout`` is set) and cancelled in ``_drop_timeout`` alone; every other method
(a read, a pause, the end of the body, an error, ``close``, ``connection_lost``) goes through
those two, and the connector makes its handlers with ``functools.partial(ResponseHandler,
loop=loop)``. So those two are what :class:`ReadHandler` replaces, on those releases
(:data:`squirrel_models_openai._aiohttp_below.VERIFIED`) and when the connector's factory is
the one read (:func:`install`); elsewhere aiohttp's own handler keeps its timer per read.
"""

from __future__ import annotations

import contextvars
import functools
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from . import _aiohttp_below

if TYPE_CHECKING:
    import asyncio

    import aiohttp

__all__ = ["ReadSlots", "install", "read_slots_supported"]

#: A slot's width, as a fraction of the read timeout: a handful of slot timers are pending at
#: any moment, whatever the number of reads.
SLOT_FRACTION = 1 / 8


class ReadSlots:
    """The read ends of one connector's handlers, grouped by slot of the loop's clock (see the
    module). ``width``: a slot's width, in seconds; any width is correct, it only sets how
    many slot timers there are."""

    __slots__ = ("_context", "_loop", "slots", "time", "width")

    def __init__(self, loop: asyncio.AbstractEventLoop, width: float) -> None:
        self._loop = loop
        # asyncio's own loops read time.monotonic() in a method of their own: called directly,
        # one Python call fewer on every read.
        base = sys.modules["asyncio"].BaseEventLoop
        self.time = time.monotonic if type(loop).time is base.time else loop.time
        self.width = width
        self.slots: dict[int, set[Any]] = {}
        # What the timers run in: aiohttp's timeout reads no context variable. A timer given
        # none copies the current one, which would keep the context of the request that
        # opened a slot alive until the slot is due, a timeout later.
        self._context = contextvars.Context()

    def join(self, handler: Any, end: float) -> None:
        """Put ``handler``, whose read ends at ``end``, in the slot due no later than that."""
        old = handler._read_slot
        if old is not None:  # its timeout was lowered since it joined: an earlier slot
            members = self.slots.get(old)
            if members is not None:
                members.discard(handler)
        timer = handler._read_timeout_handle
        if timer is not None:  # its own timer was for an earlier end
            timer.cancel()
            handler._read_timeout_handle = None
        k = math.floor(end / self.width)
        members = self.slots.get(k)
        if members is None:
            members = self.slots[k] = set()
            self._loop.call_at(k * self.width, self._due, k, context=self._context)
        members.add(handler)
        handler._read_slot = k

    def _due(self, k: int) -> None:
        members = self.slots.pop(k, None)
        if not members:
            return
        following = (k + 1) * self.width
        for handler in list(members):
            handler._read_slot = None
            end = handler._read_end
            if end >= following:  # bytes came since it joined: its read ends later
                self.join(handler, end)
            else:
                # A timer of its own at its read's end, even one already past (then timers of
                # the same moment run in the order of their moments, as aiohttp's would).
                handler._read_timeout_handle = self._loop.call_at(
                    end, handler._on_read_timeout, context=self._context)


@functools.cache
def _handler_type() -> type:
    from aiohttp.client_proto import ResponseHandler

    class ReadHandler(ResponseHandler):  # type: ignore[misc]
        """aiohttp's ``ResponseHandler`` with its read timer kept by :class:`ReadSlots`."""

        def __init__(self, loop: asyncio.AbstractEventLoop, reads: ReadSlots) -> None:
            super().__init__(loop)
            self._reads = reads
            self._read_end = 0.0
            #: The slot this handler is in (a read under way), or None.
            self._read_slot: int | None = None

        def _reschedule_timeout(self) -> None:
            timeout = self._read_timeout
            if not timeout:
                self._drop_timeout()
                return
            reads = self._reads
            end = self._read_end = reads.time() + timeout
            k = self._read_slot
            # In a slot due no later than this end already (the usual case: a read's end only
            # moves later), the slot's timer sees the new end when it is due.
            if k is None or end < k * reads.width:
                reads.join(self, end)

        #: What aiohttp's ``start_timeout`` does, without its call of the above.
        start_timeout = _reschedule_timeout

        def _drop_timeout(self) -> None:
            k = self._read_slot
            if k is not None:
                self._read_slot = None
                members = self._reads.slots.get(k)
                if members is not None:
                    members.discard(self)
            timer = self._read_timeout_handle
            if timer is not None:
                timer.cancel()
                self._read_timeout_handle = None

    return ReadHandler


def read_slots_supported() -> bool:
    """Whether the installed aiohttp is one whose read timer was read (see the module): a
    release of :data:`~squirrel_models_openai._aiohttp_below.VERIFIED` (on any other, aiohttp
    is driven through its session and keeps its own timers), whose handler has the methods
    replaced."""
    return _aiohttp_below.below_session_supported() and _handler_methods()


@functools.cache
def _handler_methods() -> bool:
    try:
        from aiohttp.client_proto import ResponseHandler
    except ImportError:
        return False
    return all(callable(getattr(ResponseHandler, name, None))
               for name in ("_reschedule_timeout", "_drop_timeout", "_on_read_timeout",
                            "start_timeout"))


def install(connector: aiohttp.BaseConnector, loop: asyncio.AbstractEventLoop,
            timeout: float) -> bool:
    """Make ``connector``'s handlers :class:`ReadHandler`s sharing one :class:`ReadSlots`,
    where its factory is the one read; returns whether it did."""
    if not read_slots_supported():
        return False
    factory = getattr(connector, "_factory", None)
    from aiohttp.client_proto import ResponseHandler

    if not (isinstance(factory, functools.partial) and factory.func is ResponseHandler
            and not factory.args and factory.keywords == {"loop": loop}):
        return False
    reads = ReadSlots(loop, timeout * SLOT_FRACTION)
    connector._factory = functools.partial(_handler_type(), loop=loop, reads=reads)  # type: ignore[attr-defined]
    return True
