"""A manager made before ``os.fork()`` (multiprocessing's ``fork`` start method, a server
that loads the application before forking its workers), used in the child.

Before: a ``SyncModelManager`` used in the child waited forever (its event loop thread stayed
in the parent), and so did closing it or a stream of it there. Now the child gets a
``SquirrelError`` saying to make one per process, at once, and closing is nothing there.
"""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AIRequest, SquirrelError, SyncModelManager
from squirrel_models.testing import StreamReply

from tests.support.forked import in_forked_child

from .test_sync import CONFIG

REQ = AIRequest.from_prompt("hi", max_tokens=10)


def test_a_sync_manager_refuses_in_a_forked_child_and_works_on_in_the_parent(squirrel_plugins: Any) -> None:
    mm = SyncModelManager(CONFIG, plugins=squirrel_plugins)
    try:
        assert mm.complete(REQ).text == "one two three"

        def use() -> str:
            try:
                mm.complete(REQ)
            except SquirrelError as exc:
                said = str(exc)
            else:
                return "answered"
            mm.close()  # nothing to stop here: returns at once
            with pytest.raises(SquirrelError, match="before a fork"):
                mm.rank()
            return said

        kind, said = in_forked_child(use)
        assert kind == "returned" and "before a fork" in said and "each process" in said
        assert mm.complete(REQ).text == "one two three"  # the parent's is untouched
    finally:
        mm.close()


def test_a_stream_open_at_the_fork_ends_at_once_in_the_child(squirrel_plugins: Any) -> None:
    mm = SyncModelManager(CONFIG, plugins=squirrel_plugins)
    provider = mm.manager.providers["p"]
    provider.script("a", StreamReply(("one ", "two ", "three"), delay=0.2))
    try:
        with mm.stream(REQ) as s:
            first = next(s).text

            def read_on() -> str:
                try:
                    next(s)
                except SquirrelError as exc:
                    said = str(exc)
                else:
                    return "read"
                s.close()  # the with block's end in the child: returns at once
                return said

            kind, said = in_forked_child(read_on)
            rest = "".join(c.text for c in s)
        assert kind == "returned" and "before a fork" in said
        assert first + rest == "one two three"
    finally:
        mm.close()
