"""``SyncModelManager`` under attack from threads: the manager closed by one thread while
others are inside calls, streams being opened or read. Every one of them ends with a
:class:`SquirrelError` (a stream read in one thread raised the futures module's
``CancelledError`` when another closed the manager), promptly, with nothing left reserved or
open upstream."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from squirrel_models import AIRequest, SquirrelError, SyncModelManager
from squirrel_models.testing import Hang, StreamReply

from .test_sync import CONFIG

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


def run_in_threads(n: int, fn: Any) -> tuple[list[threading.Thread], list[BaseException | str]]:
    outcomes: list[BaseException | str] = []

    def target() -> None:
        try:
            fn()
            outcomes.append("returned")
        except BaseException as exc:  # what each thread ended with is the subject
            outcomes.append(exc)

    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, outcomes


@BACKENDS
@pytest.mark.parametrize("where", ["reading", "opening", "complete"])
def test_closing_the_manager_under_other_threads(squirrel_plugins: Any, backend: str, where: str) -> None:
    mm = SyncModelManager(CONFIG, plugins=squirrel_plugins, backend=backend)
    provider = mm.manager.providers["p"]
    req = AIRequest.from_prompt("hi", max_tokens=10)
    n = 6
    for _ in range(n):
        provider.script("a", StreamReply(("one ", "two ", "three"), delay=0.5) if where == "reading" else Hang())

    def call() -> None:
        if where == "complete":
            mm.complete(req)
            return
        with mm.stream(req) as s:
            for _ in s:
                pass

    threads, outcomes = run_in_threads(n, call)
    time.sleep(0.8 if where == "reading" else 0.3)  # "reading": each has its first chunk
    mm.close()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == n
    for outcome in outcomes:
        assert isinstance(outcome, SquirrelError), repr(outcome)
        assert "closed" in str(outcome)
    assert provider.in_flight == 0 and provider.open_streams == 0 and provider.closed


def test_a_streams_own_close_from_another_thread_ends_it_quietly(squirrel_plugins: Any) -> None:
    with SyncModelManager(CONFIG, plugins=squirrel_plugins) as mm:
        provider = mm.manager.providers["p"]
        provider.script("a", StreamReply(("one ", "two ", "three"), delay=0.5))
        s = mm.stream(AIRequest.from_prompt("hi", max_tokens=10))
        threads, outcomes = run_in_threads(1, lambda: list(s))
        time.sleep(0.2)
        s.close()
        threads[0].join(5)
        assert outcomes == ["returned"]
        assert provider.open_streams == 0
