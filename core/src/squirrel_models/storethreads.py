"""Worker threads (and tasks) for budget store calls that must not hold their caller past its
deadline: SQLite, a blocking database driver, an asyncio-only database client.

A call into a blocking driver cannot be interrupted from outside its thread, and every trip
through a worker thread costs time the store does not control: waiting for a free thread,
for the interpreter lock, and for the event loop to pick the result up. On a loaded machine
these cost 0.05-0.3 s each, even when the database answers in a millisecond; the cleanup of a
request cut by its deadline (a release, a settlement, the ledger rows) made two or three such
trips after the deadline and ended up to 0.7 s late. :class:`StoreThreads` bounds the *wait*
instead of relying on the call's own bound alone:

- the call is started at once in a thread of the store's own pool, and always runs to its
  end there, bounded by the :class:`~squirrel_models.budget.StoreDeadline` the store hands its
  driver (nothing is lost because its caller left);
- the event loop waits for it until the caller's deadline (plus :data:`WAIT_MARGIN_S`, so a
  call that stops itself at its deadline reports its own error) and no longer: then the caller
  gets :class:`~squirrel_models.errors.BudgetStoreTimeout` with ``by_deadline`` and
  ``pending`` set, and the call finishes in the background. Until then the wait is shielded
  (a caller cancelled at its deadline gets the call's own answer if it comes in time); a
  call without a bound is not, and when its caller is cancelled it finishes in the
  background too;
- what a call left in the background produces is not lost: ``undo`` runs on its result (a
  reservation nobody waits for any more is released at once), and a failure is logged;
- a later call waits (in its thread, as long as it would wait for its connection) for the
  calls left in the background before it, so it reads what they wrote: after a request has
  ended, ``usage``, ``rows`` and ``audit`` see its settlement.

The same holds for a call that does not block but waits inside the event loop, for a pooled
connection or a server's answer (psycopg's asyncio pool): :meth:`StoreThreads.run_task` runs it
as an asyncio task of its own, which its caller's cancellation never reaches, and waits for it
exactly as for a thread. Cutting such a wait by cancelling it instead would give up a
settlement queued for a connection (its spend lost until the lease expires) or, past a
reservation's ``INSERT``, hold the headroom until expiry: a call is either waited for or left
to end in the background, never abandoned half-way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

from .budget import StoreDeadline
from .forks import forget_in_child

__all__ = ["WAIT_MARGIN_S", "StoreThreads"]

T = TypeVar("T")
log = logging.getLogger("squirrel_models.budget")

#: How long past its caller's deadline the event loop still waits for a store call: enough
#: for a call that stops itself at that deadline to report its own error.
WAIT_MARGIN_S = 0.05


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call to set ``event`` in the running event loop (a no-op
    once that loop has ended)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        def wake_asyncio() -> None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
        return wake_asyncio
    # Not anyio.from_thread.run_sync: it would hold the worker until the loop got round to it.
    # Imported by name: trio is there whenever its loop runs, but is no dependency of ours.
    trio = importlib.import_module("trio")
    token = trio.lowlevel.current_trio_token()

    def wake_trio() -> None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass
    return wake_trio


class _Call:
    """One call's hand-over between its runner (a thread, a task) and its waiter (under
    ``lock``)."""

    __slots__ = ("abandoned", "error", "finished", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any, error: BaseException | None) -> bool:
        """Hand the outcome over; whether the waiter had left already."""
        with self.lock:
            self.finished = True
            self.result, self.error = result, error
            return self.abandoned


def _queue_wait(deadline: StoreDeadline | None) -> float | None:
    return None if deadline is None else deadline.queue()


class StoreThreads:
    """A store's pool of worker threads, and its calls left in the background (see the
    module docstring). ``name`` names the threads; ``max_workers`` bounds them (made on
    demand). :meth:`run` runs a blocking call in a thread; :meth:`run_task` runs a coroutine
    of an asyncio-only driver as a task of its own, waited for the same way."""

    def __init__(self, name: str, max_workers: int = 16) -> None:
        self._name, self._max = name, max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: Calls left in the background that have not ended yet.
        self._background: set[Future[None]] = set()
        #: The tasks of :meth:`run_task` still running (the event loop keeps weak references).
        self._tasks: set[asyncio.Task[None]] = set()
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The pool's threads stayed in the parent: a pool that believes it has idle workers
        # queued every call for them, and the child waited forever. So did its background calls.
        self._pool = None
        self._lock = threading.Lock()
        self._background = set()
        self._tasks = set()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max, thread_name_prefix=self._name)
            return self._pool

    def _before(self) -> tuple[Future[None], ...]:
        with self._lock:
            return tuple(self._background)

    async def run(self, fn: Callable[..., T], *args: Any, deadline: StoreDeadline | None = None,
                  timeout_error: Callable[[], BaseException] | None = None,
                  undo: Callable[[T], object] | None = None, what: str = "call",
                  wait_s: float | None = None) -> T:
        """``fn(*args)`` in a worker thread; its result, or what it raised. With a ``deadline``
        set by the caller (``by_caller``), wait until ``deadline.at`` + :data:`WAIT_MARGIN_S`
        at most, then raise ``timeout_error()`` (a ``BudgetStoreTimeout`` with ``pending``
        set) while ``fn`` goes on in the background, where ``undo(result)`` then runs if it
        succeeds. ``wait_s``: wait that long at most instead, whatever set the deadline (a
        start-up bounded by the backend's own timeout). ``what``: the call, for the log."""
        call = _Call()
        done = anyio.Event()
        wake = _waker(done)
        before = self._before()

        def job() -> None:
            if before:  # read what the calls left in the background wrote
                concurrent.futures.wait(before, timeout=_queue_wait(deadline))
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:
                error = exc
            if not call.finish(result, error):
                wake()
            elif error is not None:
                log.warning("%s, left to finish in the background, failed: %s", what, error)
            elif undo is not None:
                try:
                    undo(result)
                except Exception as exc:
                    log.warning("%s, left to finish in the background, could not be undone: %s",
                                what, exc)

        future = self._executor().submit(job)
        result: T = await self._wait(call, done, future, deadline, timeout_error, what, wait_s)
        return result

    async def run_task(self, fn: Callable[..., Awaitable[T]], *args: Any,
                       deadline: StoreDeadline | None = None,
                       timeout_error: Callable[[], BaseException] | None = None,
                       undo: Callable[[T], Awaitable[object] | object] | None = None,
                       what: str = "call", wait_s: float | None = None) -> T:
        """``await fn(*args)`` as an asyncio task of its own, waited for as :meth:`run` waits
        for a thread: the caller's cancellation never reaches it, and past the caller's
        deadline it goes on in the background within its own bound (``undo`` may be a
        coroutine function). For a driver whose client runs on asyncio only (psycopg's
        asyncio pool): a RuntimeError under another event loop."""
        loop = asyncio.get_running_loop()
        call = _Call()
        done = anyio.Event()
        before = self._before()
        future: Future[None] = Future()

        async def job() -> None:
            try:
                if before:  # read what the calls left in the background wrote
                    await asyncio.wait([asyncio.wrap_future(f) for f in before],
                                       timeout=_queue_wait(deadline))
                result: Any = None
                error: BaseException | None = None
                try:
                    result = await fn(*args)
                except Exception as exc:
                    error = exc
                if not call.finish(result, error):
                    done.set()
                elif error is not None:
                    log.warning("%s, left to finish in the background, failed: %s", what, error)
                elif undo is not None:
                    try:
                        undone = undo(result)
                        if inspect.isawaitable(undone):
                            await undone
                    except Exception as exc:
                        log.warning("%s, left to finish in the background, could not be undone: "
                                    "%s", what, exc)
            except BaseException as exc:  # the task cancelled (its loop closing): say so
                if not call.finish(None, exc):
                    done.set()
                raise
            finally:
                future.set_result(None)

        task = loop.create_task(job(), name=f"{self._name}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        result: T = await self._wait(call, done, future, deadline, timeout_error, what, wait_s)
        return result

    async def _wait(self, call: _Call, done: anyio.Event, future: Future[None],
                    deadline: StoreDeadline | None,
                    timeout_error: Callable[[], BaseException] | None, what: str,
                    wait_s: float | None) -> Any:
        """Wait for ``call`` (ended when ``future`` is) as far as the caller's deadline allows
        (see :meth:`run`); past it, leave it in the background."""
        limit = math.inf
        if wait_s is not None:
            limit = wait_s
        elif deadline is not None and deadline.by_caller:
            limit = deadline.left() + WAIT_MARGIN_S
        # A bounded wait is shielded up to its bound, so a caller cancelled at that same
        # deadline still gets the call's own answer (its typed error) if it comes in time.
        scope = (anyio.CancelScope(shield=True, deadline=anyio.current_time() + limit)
                 if math.isfinite(limit) else anyio.CancelScope())
        try:
            with scope:
                await done.wait()
        finally:
            with call.lock:
                if not call.finished:
                    call.abandoned = True
            if call.abandoned:
                with self._lock:
                    self._background.add(future)
                future.add_done_callback(self._ended)
        if call.abandoned:
            if timeout_error is None:
                raise TimeoutError(f"{what} did not end by its caller's deadline")
            raise timeout_error()
        if call.error is not None:
            raise call.error
        return call.result

    def _ended(self, future: Future[None]) -> None:
        with self._lock:
            self._background.discard(future)

    async def drain(self) -> None:
        """Wait until every call left in the background has ended (each bounded by its own
        deadline), in a thread: the event loop runs on meanwhile (tasks of :meth:`run_task`
        need it)."""
        pending = self._before()
        if pending:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(concurrent.futures.wait, pending)

    def shutdown(self, wait: bool = True) -> None:
        """End the threads once every call has ended, including those left in the
        background (each bounded by its own deadline). ``wait``: block until then (run it in
        a thread); else return at once."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)
