"""``SyncModelManager``: the same router for code without an event loop (scripts, notebooks,
WSGI apps, thread pools).

One :class:`~squirrel_models.ModelManager` runs on one event loop in one background thread
(a daemon, so a manager never left open keeps a process from exiting); every call hands its
work to that loop through an anyio :class:`~anyio.from_thread.BlockingPortal` and waits for
the result, so calls from many threads at once run concurrently on the loop, sharing its
connections, budgets and statistics. Errors come back as they were raised: the same
:class:`~squirrel_models.errors.SquirrelError` subclasses as the async API.

A call interrupted in its thread (``KeyboardInterrupt``, or any exception raised into it)
cancels its work on the loop and waits for the cancellation to finish, so a budget
reservation is settled for what was used before the interruption propagates. A stream is
read in one task on the loop, one chunk ahead at most; leaving it early (``break``, an
exception, ``close()``) cancels that task, which settles the stream as the async API does.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .errors import SquirrelError
from .forks import forget_in_child
from .types import AIRequest, AIResponse, ModelCard, ModelRequirements, StreamChunk, ToolCall

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from .config import Config
    from .decision import Decision
    from .manager import ModelManager
    from .streaming import ResponseStream

__all__ = ["SyncModelManager", "SyncResponseStream"]

T = TypeVar("T")

FORKED = ("this SyncModelManager was made in another process, before a fork: its event loop "
          "thread is not in this one, so no call could ever run. Make a SyncModelManager in "
          "each process, after the fork (a server's post-fork hook, or multiprocessing's "
          "'spawn' or 'forkserver' start method)")


class _Loop:
    """The event loop thread and its portal; closing it stops the loop and joins the thread.
    Kept apart from :class:`SyncModelManager` so a finalizer can close it without the manager."""

    def __init__(self, backend: str) -> None:
        ready: Future[BlockingPortal] = Future()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve, backend=backend)
            except BaseException as exc:  # reported to the constructor
                if not ready.done():
                    ready.set_exception(exc)

        self.thread = threading.Thread(target=run, name="squirrel-models-loop", daemon=True)
        self.thread.start()
        self.portal = ready.result()
        self.closed = False
        self.forked = False
        self.lock = threading.Lock()
        self.streams: weakref.WeakSet[SyncResponseStream] = weakref.WeakSet()
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The loop's thread stayed in the parent: every call waited forever for it. Closed
        # here without touching the parent's loop or connections (its lock may be held).
        self.forked = self.closed = True
        self.lock = threading.Lock()

    def gone(self) -> SquirrelError:
        """The error of a call to this closed (or forked) loop."""
        return SquirrelError(FORKED if self.forked else "this SyncModelManager is closed")

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the loop. Interrupted while waiting, the call is cancelled
        and waited for (its cleanup, such as a settlement, runs first), then the
        interruption propagates."""
        if threading.current_thread() is self.thread:
            raise SquirrelError("a SyncModelManager cannot be called from its own event loop; "
                                "use its .manager (the async ModelManager) there")
        done = threading.Event()

        async def call() -> T:
            try:
                return await fn(*args)
            finally:
                done.set()

        try:
            future = self.portal.start_task_soon(call)
        except RuntimeError:  # the portal has stopped
            raise SquirrelError("this SyncModelManager is closed") from None
        try:
            return future.result()
        except CancelledError:  # not by us: the manager was closed while this call ran
            raise SquirrelError("this SyncModelManager was closed while the call ran") from None
        except BaseException:
            if not future.done():
                future.cancel()
                done.wait()
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the loop's thread (selector state is the loop's to touch)."""
        try:
            return self.portal.call(fn, *args)
        except RuntimeError as exc:
            if self.closed:
                raise SquirrelError("this SyncModelManager is closed") from None
            raise exc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.portal.call(self.portal.stop, True)
        except RuntimeError:  # the loop is already gone
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join()


def _close_at_exit(loop: _Loop, manager: ModelManager) -> None:
    """A manager left open: close it (providers, budget store) and stop its loop."""
    if loop.closed:
        return
    try:
        loop.run(manager.aclose)
    except Exception:  # at exit or in the collector: nothing to report to
        pass
    loop.close()


class SyncModelManager:
    """A synchronous :class:`~squirrel_models.ModelManager`: ``complete``, ``stream`` (an
    iterator), ``rank``, ``get_model``, ``reload``, ``models``, with the same arguments,
    answers and errors. ``config`` and the keywords are :class:`ModelManager`'s; pass a
    ``ModelManager`` instead to drive that one (not yet used by any event loop).

    The manager starts (discovers every provider's models) when built, as ``async with``
    does. Close it (``close()`` or ``with SyncModelManager(...) as mm:``) to close its
    providers' connections and its budget store and stop its thread; one left open is
    closed when it is garbage-collected or at interpreter exit. Safe to use from many
    threads at once. ``backend`` is the anyio backend of its loop (``asyncio`` or ``trio``).

    ``manager`` is the async :class:`ModelManager` underneath (use it only on its loop).
    """

    def __init__(self, config: ModelManager | Config | Mapping[str, Any] | None = None, *,
                 backend: str = "asyncio", **kw: Any) -> None:
        from .manager import ModelManager

        manager = config if isinstance(config, ModelManager) else ModelManager(config, **kw)
        self.manager = manager
        self._loop = _Loop(backend)
        self._finalizer = weakref.finalize(self, _close_at_exit, self._loop, manager)
        try:
            self._loop.run(manager.start)
        except BaseException:
            self._finalizer()  # start() closed the manager; stop the loop too
            raise

    @classmethod
    def from_toml(cls, path: str | Path, *, backend: str = "asyncio", **kw: Any) -> SyncModelManager:
        """A manager built from a TOML file (``reload()`` re-reads it)."""
        from .manager import ModelManager

        return cls(ModelManager.from_toml(path, **kw), backend=backend)

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop open streams (each settled), close the manager, stop the loop. Idempotent."""
        loop = self._loop
        with loop.lock:
            if loop.closed:
                return
            for s in list(loop.streams):
                s._stopped_by_manager = True  # its reader gets an error, not a quiet end
                s.close()
            try:
                loop.run(self.manager.aclose)
            finally:
                self._finalizer.detach()
                loop.close()

    @property
    def closed(self) -> bool:
        return self._loop.closed

    def __enter__(self) -> SyncModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> _Loop:
        if self._loop.closed:
            raise self._loop.gone()
        return self._loop

    # --- requests ------------------------------------------------------------------------

    def complete(self, request: AIRequest, requirements: ModelRequirements | None = None, *,
                 timeout: float | None = None) -> AIResponse:
        """:meth:`ModelManager.complete`, waited for."""
        manager = self.manager

        async def go() -> AIResponse:
            return await manager.complete(request, requirements, timeout=timeout)

        return self._check().run(go)

    def stream(self, request: AIRequest, requirements: ModelRequirements | None = None, *,
               timeout: float | None = None) -> SyncResponseStream:
        """:meth:`ModelManager.stream` as an iterator of :class:`StreamChunk`::

            with mm.stream(request) as s:
                for chunk in s:
                    print(chunk.text, end="")
            print(s.response.cost)

        Returns once the stream has opened (selection, budget and the first chunk; failures
        before it fall back as in the async API, and the last one is raised here).
        """
        return SyncResponseStream(self._check(), self.manager, request, requirements, timeout)

    def rank(self, requirements: ModelRequirements | None = None,
             request: AIRequest | None = None) -> Decision:
        """:meth:`ModelManager.rank`."""
        return self._check().call(self.manager.rank, requirements, request)

    def get_model(self, requirements: ModelRequirements | None = None,
                  request: AIRequest | None = None) -> ModelCard:
        """:meth:`ModelManager.get_model`."""
        return self._check().call(self.manager.get_model, requirements, request)

    def reload(self, config: Any = None) -> None:
        """:meth:`ModelManager.reload`, waited for."""
        self._check().run(self.manager.reload, config)

    @property
    def models(self) -> Mapping[str, ModelCard]:
        return self._check().call(lambda: dict(self.manager.models))


class _Shared:
    """A stream's state shared by its reader and its task on the loop."""

    def __init__(self) -> None:
        self.rs: ResponseStream | None = None
        self.receive: MemoryObjectReceiveStream[StreamChunk] | None = None
        self.opened = threading.Event()
        self.done = threading.Event()


class SyncResponseStream:
    """A streamed answer, read from a synchronous thread: iterate for :class:`StreamChunk`
    objects; ``text`` and ``tool_calls`` so far; ``response`` (an :class:`AIResponse`) once
    the stream has ended. Leaving it early (``close()``, the end of a ``with`` block, or an
    exception such as ``KeyboardInterrupt`` while iterating) stops the upstream call and
    settles what was used. Iterate it from one thread."""

    def __init__(self, loop: _Loop, manager: ModelManager, request: AIRequest,
                 requirements: ModelRequirements | None, timeout: float | None) -> None:
        self._loop = loop
        self._finished = False
        self._stopped_by_manager = False
        # What the task on the loop shares with this object. The task must not hold this
        # object itself: dropped unfinished, it is collected, and __del__ stops the task.
        st = self._st = _Shared()

        async def pump(send: MemoryObjectSendStream[StreamChunk]) -> None:
            try:
                async with send, manager.stream(request, requirements, timeout=timeout) as rs:
                    st.rs = rs
                    st.opened.set()
                    async for chunk in rs:
                        await send.send(chunk)  # waits for the reader: one chunk ahead at most
            finally:
                if st.receive is not None:  # the reader's end too: a reader left is done
                    st.receive.close()
                st.opened.set()
                st.done.set()

        def channel() -> MemoryObjectSendStream[StreamChunk]:
            send, st.receive = anyio.create_memory_object_stream[StreamChunk](0)
            return send

        send = loop.call(channel)
        try:
            self._future = loop.portal.start_task_soon(pump, send)
        except RuntimeError:  # the portal stopped: closed by another thread meanwhile
            raise SquirrelError("this SyncModelManager is closed") from None
        loop.streams.add(self)
        try:
            st.opened.wait()
            if st.rs is None:  # it failed before its first chunk: raise its error
                self._outcome()
                raise SquirrelError("the SyncModelManager of this stream was closed while the "
                                    "stream opened")
        except BaseException:
            self.close()
            raise

    def _outcome(self) -> None:
        """Wait for the stream's task; raise its error. A task cancelled by the manager's
        ``close()`` in another thread is a :class:`SquirrelError` (never the futures
        module's ``CancelledError``); one stopped by this stream's own ``close()`` ended."""
        try:
            self._future.result()
        except CancelledError:
            if self._stopped_by_manager or self._loop.closed:
                raise SquirrelError("the SyncModelManager of this stream was closed while the "
                                    "stream ran") from None

    @property
    def _rs(self) -> ResponseStream | None:
        return self._st.rs

    # --- what arrived ----------------------------------------------------------------------

    @property
    def response(self) -> AIResponse | None:
        """The whole answer (cost, usage, decision), once the stream has ended."""
        return self._rs.response if self._rs is not None else None

    @property
    def text(self) -> str:
        return self._rs.text if self._rs is not None else ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self._rs.tool_calls if self._rs is not None else ()

    @property
    def model(self) -> ModelCard | None:
        return self._rs.model if self._rs is not None else None

    # --- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        if self._finished:
            raise StopIteration
        if self._loop.forked:
            raise self._loop.gone()
        if self._loop.closed:
            raise SquirrelError("the SyncModelManager of this stream is closed")
        receive = self._st.receive
        assert receive is not None
        try:
            return self._loop.portal.call(receive.receive)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._finished = True
            self._outcome()  # waits for the settlement; raises the stream's error
            raise StopIteration from None
        except RuntimeError:  # the portal stopped under us: closed by another thread
            self.close()
            if not (self._stopped_by_manager or self._loop.closed):
                raise
            raise SquirrelError("the SyncModelManager of this stream was closed while the "
                                "stream ran") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading: cancel the upstream call (if still running) and wait until what was
        used is settled. Idempotent."""
        self._finished = True
        if self._loop.forked:  # its task is the parent's: nothing here to stop or wait for
            return
        if not self._st.done.is_set():
            self._future.cancel()
            self._st.done.wait()
        self._loop.streams.discard(self)
        receive = self._st.receive
        if receive is not None and not self._loop.closed:
            try:
                self._loop.portal.call(receive.close)
            except RuntimeError:  # the loop is gone
                pass

    def __enter__(self) -> SyncResponseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped unfinished (a ``for`` loop left by ``break``, without ``with``): stop its
        # task, which settles the stream. Only a request: a collector may run on any thread.
        future = getattr(self, "_future", None)
        if future is not None and not self._st.done.is_set():
            future.cancel()
