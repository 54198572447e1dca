"""Run a function in a child forked from the test process (multiprocessing's ``fork`` start
method): what a manager made before a fork does in the child."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

__all__ = ["across_a_fork", "in_forked_child"]

T = TypeVar("T")


def in_forked_child(fn: Callable[[], object], timeout: float = 60) -> Any:
    """``fn()`` in a child forked from this process: what it returned, or the type and text
    of what it raised; "hung" if the child did not answer within ``timeout``."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child(out: Connection) -> None:
        try:
            out.send(("returned", fn()))
        except BaseException as exc:  # what the child met is the subject
            out.send((type(exc).__name__, str(exc)))

    proc = ctx.Process(target=child, args=(send,), daemon=True)
    proc.start()
    send.close()
    try:
        answer = recv.recv() if recv.poll(timeout) else ("hung", "")
    except EOFError:
        answer = ("died", str(proc.exitcode))
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return answer


def across_a_fork(mm: Any, request: Any, reply: str, n: int,
                  after: Callable[[Callable[[Any], Any]], T]) -> T:
    """A manager made before a fork, used on both sides of it: the parent, on an event loop
    in a thread of its own, makes 2 requests (its pool has connections), then ``n`` more
    while a child forked from it makes ``n`` of its own on a loop of its own and closes its
    manager. Every answer must read ``reply``. Returns ``after(run)`` (``run`` awaits a
    coroutine on the parent's loop), read before the parent closes the manager."""
    loop = asyncio.new_event_loop()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    async def requests(k: int) -> list[str]:
        return [(await mm.complete(request)).text for _ in range(k)]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert run(requests(2)) == [reply] * 2
        parents = asyncio.run_coroutine_threadsafe(requests(n), loop)  # while the child runs

        def child() -> list[str]:
            async def go() -> list[str]:
                texts = await requests(n)
                await mm.aclose()
                return texts
            return asyncio.run(go())

        assert in_forked_child(child) == ("returned", [reply] * n)
        assert parents.result(120) == [reply] * n
        return after(run)
    finally:
        run(mm.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
