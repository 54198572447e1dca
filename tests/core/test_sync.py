"""``SyncModelManager``: the same manager from threads without an event loop. One loop thread
per manager; calls from many threads at once; errors unchanged; a stream as an iterator; a
call or stream interrupted (``close()``, ``break``, ``KeyboardInterrupt``) settles its
reservation; a clean close."""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    CapabilityNotSupported,
    InvalidRequest,
    ModelRequirements,
    ServerError,
    SquirrelError,
    SyncModelManager,
)
from squirrel_models.testing import Fail, Hang, StreamReply

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
CONFIG = {
    "providers": [{"name": "p", "type": "scripted", "options": {"models": ["a", "b"], "reply": "one two three"},
                   "models": [{"name": "a", "price": {"input": "1000", "output": "1000"}},
                              {"name": "b", "price": {"input": "2000", "output": "2000"}}]}],
    "budget": {"limits": [{"scope": "global", "limit": "10"}]},
    "fallback": {"options": {"retry": {"max_retries": 0}}},
}


@pytest.fixture
def make(squirrel_plugins: Any) -> Iterator[Any]:
    made: list[SyncModelManager] = []

    def build(backend: str = "asyncio", **changes: Any) -> SyncModelManager:
        mm = SyncModelManager({**CONFIG, **changes}, plugins=squirrel_plugins, backend=backend)
        made.append(mm)
        return mm

    yield build
    for mm in made:
        mm.close()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "squirrel-models-loop"]


def budget(mm: SyncModelManager) -> tuple[Decimal, Decimal]:
    """(committed, reserved) of the global budget."""
    card = mm.models["p/a"]

    async def read() -> Any:
        return await mm.manager.tokens.check_budget(card)

    (u,) = mm._loop.run(read)
    return u.committed, u.reserved


@BACKENDS
def test_complete_stream_rank(make: Any, backend: str) -> None:
    before = len(loop_threads())
    mm = make(backend)
    assert len(loop_threads()) == before + 1
    req = AIRequest.from_prompt("hello there", max_tokens=10)
    resp = mm.complete(req)
    assert (resp.text, resp.model) == ("one two three", "p/a") and resp.cost is not None
    with mm.stream(req) as s:
        chunks = [c.text for c in s]
    assert "".join(chunks) == "one two three" == s.text
    assert s.response is not None and s.response.cost == resp.cost and s.model is not None
    assert [c.card.id for c in mm.rank(request=req).candidates] == ["p/a", "p/b"]
    assert mm.get_model().id == "p/a"
    assert budget(mm) == (resp.cost * 2, 0)
    mm.close()
    assert mm.closed and len(loop_threads()) == before
    mm.close()  # idempotent
    with pytest.raises(SquirrelError, match="closed"):
        mm.complete(req)


def test_many_threads_share_one_loop(make: Any) -> None:
    mm = make()
    provider = mm.manager.providers["p"]
    for step in range(40):
        provider.script("a", StreamReply(("x ", "y"), delay=0.01) if step % 2 else StreamReply(("z",), delay=0.01))
    seen_threads: set[str] = set()

    def one(i: int) -> Decimal:
        seen_threads.add(threading.current_thread().name)
        req = AIRequest.from_prompt(f"request {i}", max_tokens=5)
        if i % 2:
            r = mm.complete(req)
            assert r.cost is not None
            return r.cost
        with mm.stream(req) as s:
            for _ in s:
                pass
        assert s.response is not None and s.response.cost is not None
        return s.response.cost

    with ThreadPoolExecutor(8) as pool:
        costs = list(pool.map(one, range(40)))
    assert len(seen_threads) > 1 and len(loop_threads()) >= 1
    assert provider.max_in_flight > 1 or provider.calls["a"] == 40  # concurrent on one loop
    assert budget(mm) == (sum(costs), 0)


def test_errors_come_back_unchanged(make: Any) -> None:
    mm = make()
    with pytest.raises(CapabilityNotSupported) as info:
        mm.complete(AIRequest.from_prompt("hi"), ModelRequirements(required_features={"tools"}))
    assert "lacks feature tools" in str(info.value)
    with pytest.raises(CapabilityNotSupported):
        mm.stream(AIRequest.from_prompt("hi"), ModelRequirements(required_features={"tools"}))
    with pytest.raises(InvalidRequest) as bad:
        mm.stream(AIRequest.from_prompt("hi", n=2))
    assert bad.value.field == "n"
    error = ServerError("down", status_code=500)
    mm.manager.providers["p"].script("a", Fail(error))
    with pytest.raises(SquirrelError) as failed:
        mm.complete(AIRequest.from_prompt("hi", max_tokens=5), ModelRequirements(models={"p/a"}))
    assert failed.value is error or error in getattr(failed.value, "errors", [])
    assert budget(mm)[1] == 0


def test_leaving_a_stream_settles_it(make: Any) -> None:
    mm = make()
    provider = mm.manager.providers["p"]
    provider.script("a", StreamReply(("one ", "two ", "three ", "four"), delay=0.05))
    s = mm.stream(AIRequest.from_prompt("hi", max_tokens=10))
    first = next(s)
    assert first.text == "one "
    s.close()
    committed, reserved = budget(mm)
    assert reserved == 0 and committed > 0  # the words that came were charged
    assert provider.open_streams == 0
    with pytest.raises(StopIteration):
        next(s)
    # a ``for`` loop left by ``break``, the stream dropped without close()
    provider.script("a", StreamReply(("one ", "two ", "three ", "four"), delay=0.05))
    for _ in mm.stream(AIRequest.from_prompt("hi", max_tokens=10)):
        break
    gc.collect()
    deadline = time.monotonic() + 5
    while budget(mm)[1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget(mm)[1] == 0 and provider.open_streams == 0


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever an earlier test
    left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_when(ready: Callable[[], bool], seconds: float = 0.3) -> threading.Thread:
    """SIGINT to the main thread ``seconds`` after ``ready()`` holds (the call has reached the
    provider). A fixed delay from the start interrupted calls still starting up on a loaded
    machine, so neither reached its script and the last call met the Hang; and a SIGINT sent
    to the process may be taken by another thread, leaving the main thread waiting for the
    call's result until the call's own deadline (60 s), which then ended it first."""
    main = threading.main_thread().ident
    assert main is not None

    def run() -> None:
        end = time.monotonic() + 60
        while not ready() and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(seconds)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_keyboard_interrupt_settles(make: Any, python_sigint: None) -> None:
    mm = make()
    provider = mm.manager.providers["p"]
    provider.script("a", Hang())
    _interrupt_when(lambda: provider.in_flight > 0)
    with pytest.raises(KeyboardInterrupt):
        mm.complete(AIRequest.from_prompt("hi", max_tokens=10))
    # Interrupted while the provider answered: it may bill the call, so its worst case is
    # charged (charge_unanswered), and nothing stays reserved.
    worst = mm.manager.tokens.estimate(AIRequest.from_prompt("hi", max_tokens=10),
                                       mm.models["p/a"]).worst_case_cost
    assert budget(mm) == (worst, 0) and provider.in_flight == 0
    provider.script("a", StreamReply(("one ", "two ", "three"), delay=1.0))
    _interrupt_when(lambda: provider.open_streams > 0)
    with pytest.raises(KeyboardInterrupt), mm.stream(AIRequest.from_prompt("hi", max_tokens=10)) as s:
        for _ in s:
            pass
    assert budget(mm)[1] == 0 and provider.open_streams == 0
    # the manager still works
    assert mm.complete(AIRequest.from_prompt("hi", max_tokens=10)).text == "one two three"


def test_a_manager_left_open_is_closed_when_collected(squirrel_plugins: Any) -> None:
    before = len(loop_threads())
    mm = SyncModelManager(CONFIG, plugins=squirrel_plugins)
    provider = mm.manager.providers["p"]
    mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
    del mm
    gc.collect()
    assert provider.closed and len(loop_threads()) == before


def test_a_failed_start_leaves_no_thread(squirrel_plugins: Any) -> None:
    before = len(loop_threads())
    bad = {**CONFIG, "budget": {"limits": [{"scope": "model:p/zz", "limit": "1"}]}}
    with pytest.raises(SquirrelError):
        SyncModelManager(bad, plugins=squirrel_plugins)
    assert len(loop_threads()) == before


def test_close_stops_open_streams(make: Any) -> None:
    mm = make()
    provider = mm.manager.providers["p"]
    provider.script("a", StreamReply(("one ", "two ", "three"), delay=0.5))
    s = mm.stream(AIRequest.from_prompt("hi", max_tokens=10))
    mm.close()
    assert provider.open_streams == 0 and provider.closed
    assert list(s) == []  # a stream that was stopped reads no more


def test_calls_from_the_loop_thread_are_refused(make: Any) -> None:
    mm = make()

    async def inside() -> None:
        mm.complete(AIRequest.from_prompt("hi"))

    with pytest.raises(SquirrelError, match="its own event loop"):
        mm._loop.run(inside)
