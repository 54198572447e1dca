"""What a forked child must not inherit from its parent: the threads, connections, locks and
leases of objects made before ``os.fork()`` (also multiprocessing's ``fork`` start method,
and servers that load the application before forking their workers).

A child has only the thread that forked: a worker pool made in the parent has threads that
do not exist there (work handed to it waits forever), a lock another thread held at the fork
stays held, a database connection or socket is the parent's too (used by both, its protocol
state and its file locks mix), and a budget slice leased by the parent would be spent twice.
Objects holding such things call :func:`forget_in_child` when made; right after a fork, in
the child only, each one's ``_after_fork_in_child()`` drops what belongs to the parent
(without closing it: that is the parent's to do) so the child makes its own on first use,
or refuses with a clear error where it cannot.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "forget_in_child"]

log = logging.getLogger("squirrel_models")


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None:
        """Called in a forked child, in the thread that forked, before anything else runs:
        drop (never close) what belongs to the parent."""


#: id -> weak reference (by id: an attrs class comparing by value is not hashable)
_live: dict[int, weakref.ref[ForkAware]] = {}


def forget_in_child(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` called in every child forked from now on (while
    ``obj`` lives)."""
    key = id(obj)
    _live[key] = weakref.ref(obj, lambda _ref: _live.pop(key, None))


def _in_child() -> None:
    for ref in list(_live.values()):
        obj = ref()
        if obj is None:
            continue
        try:
            obj._after_fork_in_child()
        except Exception:  # one object's failure must not stop the child's start
            log.warning("after a fork, %s could not drop its parent's resources", type(obj).__name__,
                        exc_info=True)


os.register_at_fork(after_in_child=_in_child)
