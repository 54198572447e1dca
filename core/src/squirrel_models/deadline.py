"""A request's deadline: the block that runs a request's attempts is cut at a moment of the
event loop's clock (anyio's clock: ``loop.time()`` under asyncio), with the cheapest construct
that is correct for what may run inside it (internal).

- :class:`AnyioDeadline`: an ``anyio.CancelScope``. Cancellation is level-triggered and
  respects cancel shields: cleanup that must finish (a budget store's settle, closing a local
  model's generation) runs shielded inside it, and a store reads the deadline with
  ``anyio.current_effective_deadline()``. Used under trio (a thin wrapper of trio's own scope
  there), for streams (the caller's body runs inside) and whenever something inside may
  shield or read the deadline.
- :class:`AsyncioDeadline`: under asyncio, when nothing inside shields or reads the deadline
  (see ``ModelManager._native_deadline``): one ``loop.call_at`` timer that cancels the task,
  as ``asyncio.timeout`` does, and tells its own cancellation from the caller's by the task's
  cancellation count. Until the block is left it cancels again every :data:`REDELIVER_S`
  (code that swallowed a cancellation cannot hold the request). An anyio cancel scope costs
  several times as much on asyncio (its bookkeeping per task and scope). The timers of many
  requests are shared: one per :data:`SLOT_S` of the clock (see :class:`_Slots`).

Both are used the same way::

    with deadline(end, native) as cut:
        ...
    if cut.expired:   # the deadline cut the block (its cancellation was absorbed)
        ...
"""

from __future__ import annotations

import contextvars
import math
import sys
import weakref
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    import asyncio

__all__ = ["REDELIVER_S", "AnyioDeadline", "AsyncioDeadline", "current_task", "deadline", "now",
           "running_loop"]

#: After the deadline, how often the task is cancelled again while it is still in the block.
REDELIVER_S = 0.01


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None (under trio, or outside any loop)."""
    # asyncio is not imported for this (it is not imported with the API, and there is no
    # running asyncio loop unless it was).
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    try:
        return aio.get_running_loop()  # type: ignore[no-any-return]
    except RuntimeError:
        return None


def current_task() -> object:
    """The running task (asyncio's or trio's own object: to compare, cheaper than anyio's
    ``get_current_task()``, which builds a description of it)."""
    loop = running_loop()
    if loop is not None:
        return sys.modules["asyncio"].current_task(loop)
    trio = sys.modules.get("trio")
    if trio is not None:
        return trio.lowlevel.current_task()
    return anyio.get_current_task().id  # pragma: no cover - another backend


def now() -> float:
    """``anyio.current_time()``, without asking which library runs (the running asyncio
    loop's clock when there is one)."""
    loop = running_loop()
    return loop.time() if loop is not None else anyio.current_time()


class AnyioDeadline:
    """An ``anyio.CancelScope`` with a deadline (see the module)."""

    __slots__ = ("_scope", "expired")

    def __init__(self, end: float) -> None:
        self._scope = anyio.CancelScope(deadline=end)
        self.expired = False

    def __enter__(self) -> AnyioDeadline:
        self._scope.__enter__()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        scope = self._scope
        swallowed = scope.__exit__(typ, exc, tb)
        if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
            self.expired = True
        return bool(swallowed)


class _Slots:
    """The asyncio deadlines of one loop, grouped by :data:`SLOT_S` slot of its clock: one
    timer per slot, due at the slot's start (never after any deadline in it), instead of one
    timer per request (a heap push, a cancel and a later pop of each: much of a fast
    request's cost). When a slot is due, each block still inside it gets a timer of its own
    for the rest of its time (only requests still running at their deadline)."""

    __slots__ = ("_context", "_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the registry's value (and ``_last``) must not keep a loop alive
        # after its program dropped it (a strong one leaked every loop that ran a request).
        self._loop = weakref.ref(loop)
        self._slots: dict[int, set[AsyncioDeadline]] = {}
        # What the slots' timers run in: their callbacks read no context variable. A timer
        # given none copies the current one, which kept the context of the request that
        # opened the slot (its values, whatever they hold) alive until the slot was due, a
        # timeout later.
        self._context = contextvars.Context()

    def join(self, block: AsyncioDeadline) -> set[AsyncioDeadline]:
        """Add ``block`` to its slot (armed when new); returns the slot's set."""
        k = math.floor(block._end / SLOT_S)
        members = self._slots.get(k)
        if members is None:
            members = self._slots[k] = set()
            block._loop.call_at(k * SLOT_S, self._due, k, context=self._context)
        members.add(block)
        return members

    def _due(self, k: int) -> None:
        members = self._slots.pop(k, None)
        if not members:
            return
        # Each its own timer at its own moment, even one already past: timers of the same
        # moment then run in the order of their moments, as a timer per request did (a
        # caller's cancel scope due a hair earlier still comes first).
        for block in list(members):
            block._handle = block._loop.call_at(block._end, block._fire, context=self._context)


#: The width of a deadline slot (see :class:`_Slots`), in seconds of the loop's clock.
SLOT_S = 0.05
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


_last: _Slots | None = None  # the last loop's: no weak-key lookup while one loop runs


def _slots_of(loop: asyncio.AbstractEventLoop) -> _Slots:
    global _last
    slots = _last
    if slots is not None and slots._loop() is loop:
        return slots
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = _Slots(loop)
    _last = slots
    return slots


class AsyncioDeadline:
    """A timer that cancels the current asyncio task at ``end`` (see the module)."""

    __slots__ = ("_cancelling", "_end", "_fired", "_handle", "_inside", "_loop", "_slot",
                 "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object],
                 end: float) -> None:
        self._loop, self._task, self._end = loop, task, end
        self._fired = 0
        self._inside = False
        self._handle: asyncio.TimerHandle | None = None
        self._slot: set[AsyncioDeadline] | None = None
        self._cancelling = 0
        self.expired = False

    def __enter__(self) -> AsyncioDeadline:
        self._cancelling = self._task.cancelling()
        self._inside = True
        self._slot = _slots_of(self._loop).join(self)
        return self

    def cancel(self) -> None:
        """Cut the block now, as its deadline would (the gateway cuts a request whose client
        has gone): the task is cancelled, again every :data:`REDELIVER_S` while it stays in
        the block, and the cancellation is absorbed when it leaves (``expired`` then True).
        Nothing once the block is left or already cut."""
        if self._inside and not self._fired:
            self._fire()

    def _fire(self) -> None:
        if not self._inside:
            return
        self._fired += 1
        self._task.cancel()
        self._handle = self._loop.call_later(REDELIVER_S, self._fire)

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._inside = False
        if self._slot is not None:
            self._slot.discard(self)
            self._slot = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._fired:
            return False
        left = self._cancelling
        for _ in range(self._fired):
            left = self._task.uncancel()
        if typ is not None and issubclass(typ, sys.modules["asyncio"].CancelledError) \
                and left <= self._cancelling:
            # Only ours: the caller did not cancel meanwhile. Absorbed, as a cancel scope
            # absorbs its own cancellation.
            self.expired = True
            return True
        return False


def deadline(end: float, native: bool, loop: asyncio.AbstractEventLoop | None = None
             ) -> AnyioDeadline | AsyncioDeadline:
    """The construct for a block cut at ``end`` (anyio's clock). ``native``: nothing inside
    shields or reads the deadline, so under asyncio a plain timer does. ``loop``: the running
    asyncio loop (:func:`running_loop`), when the caller has it already."""
    if native:
        if loop is None:
            loop = running_loop()
        if loop is not None:
            task = sys.modules["asyncio"].current_task(loop)
            if task is not None:
                return AsyncioDeadline(loop, task, end)
    return AnyioDeadline(end)
