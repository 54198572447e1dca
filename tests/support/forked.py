"""Run a function in a child forked from the test process (multiprocessing's ``fork`` start
method): what a manager made before a fork does in the child."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["in_forked_child"]


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
