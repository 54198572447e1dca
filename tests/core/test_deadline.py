"""A request's deadline with the cheapest correct construct (squirrel_models.deadline): a
plain asyncio timer when nothing inside shields itself or reads the deadline, else an anyio
cancel scope. Either way the request ends by its deadline, a caller's cancellation stays the
caller's, and the task's cancellation count is left as it was."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from squirrel_models import AIRequest, DeadlineExceeded
from squirrel_models.deadline import AnyioDeadline, AsyncioDeadline, deadline, now
from squirrel_models.testing import Reply
from squirrel_models.testing.provider import Hang

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PROMPT = AIRequest.from_prompt("hello", max_tokens=10)


class Unsafe:
    """A provider that does not say its calls are cancel-safe (the attribute is absent)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "cancel_safe":
            raise AttributeError(name)
        return getattr(self._inner, name)


class Swallowing:
    """A provider whose call swallows the first cancellation and waits again (a client
    library's bug): the deadline must still end the request."""

    cancel_safe = True

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name
        self.swallowed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, model: Any, request: Any) -> Any:
        try:
            await anyio.sleep(30)
        except BaseException:
            if sniffio.current_async_library() != "asyncio":
                raise  # trio's own scopes cannot be swallowed this way; nothing to show
            self.swallowed += 1
        await anyio.sleep(30)
        raise AssertionError("not cut")


def native_expected() -> bool:
    return sniffio.current_async_library() == "asyncio"


async def test_the_realistic_setup_gets_the_plain_timer(squirrel_manager, monkeypatch
                                                       ) -> None:
    import squirrel_models.manager as manager_module

    seen: list[type] = []

    def spy(end: float, native: bool, loop: Any = None) -> Any:
        made = deadline(end, native, loop)
        seen.append(type(made))
        return made

    monkeypatch.setattr(manager_module, "deadline_of", spy)
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        assert mm._native_deadline  # memory budget, no rate-limit store calls, cancel-safe
        resp = await mm.complete(PROMPT)
    assert resp.text
    assert seen == [AsyncioDeadline if native_expected() else AnyioDeadline]


async def test_a_provider_that_may_shield_gets_a_cancel_scope(squirrel_manager) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], Unsafe(p))
        assert not mm._native_deadline
        p.script("a", Reply("hi"))
        assert (await mm.complete(PROMPT)).text == "hi"


async def test_a_budget_store_that_suspends_gets_a_cancel_scope(squirrel_manager) -> None:
    from squirrel_models.builtins.memory_budget import MemoryBudgetBackend

    class Suspending(MemoryBudgetBackend):
        nonblocking = False

    p = provider("p", card("a"))
    async with squirrel_manager(budget_backend=Suspending()) as mm:
        mm.register_model(p.models[0], p)
        assert not mm._native_deadline


@pytest.mark.parametrize("safe", [True, False])
async def test_a_hang_ends_by_the_deadline_with_either_construct(squirrel_manager, safe: bool
                                                                 ) -> None:
    p = provider("p", card("a"))
    p.default = Hang()
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p if safe else Unsafe(p))
        t0 = anyio.current_time()
        with pytest.raises(DeadlineExceeded) as info:
            await mm.complete(PROMPT, timeout=0.2)
        assert anyio.current_time() - t0 < 1.0
        # The cut attempt is recorded as the model's timeout.
        assert [a.outcome for a in info.value.attempts] == ["error"]
        # The task's cancellation count is back where it was: later awaits are not cancelled.
        await anyio.sleep(0.01)
        p.default = Reply("after")
        assert (await mm.complete(PROMPT)).text == "after"


async def test_a_swallowed_cancellation_is_delivered_again(squirrel_manager) -> None:
    p = provider("p", card("a"))
    sw = Swallowing(p)
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], sw)  # type: ignore[arg-type]
        t0 = anyio.current_time()
        with pytest.raises(DeadlineExceeded):
            await mm.complete(PROMPT, timeout=0.2)
        assert anyio.current_time() - t0 < 1.0
    assert sw.swallowed == (1 if native_expected() else 0)


@pytest.mark.parametrize("safe", [True, False])
async def test_the_callers_cancellation_stays_the_callers(squirrel_manager, safe: bool) -> None:
    p = provider("p", card("a"))
    p.default = Hang()
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p if safe else Unsafe(p))
        with anyio.move_on_after(0.1) as scope:
            await mm.complete(PROMPT, timeout=5)
        assert scope.cancelled_caught  # cancelled, not DeadlineExceeded
        p.default = Reply("after")
        assert (await mm.complete(PROMPT)).text == "after"


async def test_the_callers_cancellation_with_the_deadline_is_not_a_timeout(squirrel_manager
                                                                           ) -> None:
    """The caller cancels at the very moment the deadline fires: the cancellation wins (it is
    not turned into DeadlineExceeded and swallowed)."""
    p = provider("p", card("a"))
    p.default = Hang()
    async with squirrel_manager() as mm:
        mm.register_model(p.models[0], p)
        with anyio.move_on_after(0.2) as scope:
            try:
                await mm.complete(PROMPT, timeout=0.2)
            except DeadlineExceeded:
                pass  # the deadline came first: also correct
        assert scope.cancelled_caught


async def test_an_asyncio_task_cancelled_by_its_caller_propagates() -> None:
    if not native_expected():
        pytest.skip("asyncio's own task cancellation")

    async def body() -> None:
        with deadline(now() + 5, True) as cut:
            assert isinstance(cut, AsyncioDeadline)
            await asyncio.sleep(10)

    task = asyncio.get_running_loop().create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_construct_itself_cuts_and_says_so() -> None:
    for native in (True, False):
        t0 = anyio.current_time()
        with deadline(now() + 0.05, native) as cut:
            await anyio.sleep(5)
        assert cut.expired
        assert anyio.current_time() - t0 < 1.0
        with deadline(now() + 5, native) as cut:
            await anyio.lowlevel.checkpoint()
        assert not cut.expired
        if native_expected():
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0


async def test_the_native_construct_is_cut_on_demand() -> None:
    """``AsyncioDeadline.cancel()`` (the gateway's cut when a client goes) cuts the block at
    once, long before its deadline, even from a callback outside the task, again when a
    cancellation was swallowed; it is absorbed as the deadline's is, a caller's own
    cancellation meanwhile still propagates, and nothing happens once the block is left."""
    if not native_expected():
        pytest.skip("asyncio's own task cancellation")
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    t0 = now()
    with deadline(t0 + 30, True) as cut:
        assert isinstance(cut, AsyncioDeadline)
        loop.call_later(0.02, cut.cancel)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(10)  # swallowed once: delivered again
    assert cut.expired and now() - t0 < 1.0
    assert task.cancelling() == 0
    cut.cancel()  # left: nothing
    await asyncio.sleep(0.03)
    with deadline(now() + 30, True) as cut:
        await asyncio.sleep(0)
    assert not cut.expired

    async def body() -> None:
        with deadline(now() + 30, True) as inner:
            inner.cancel()
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(10)

    other = loop.create_task(body())
    with pytest.raises(asyncio.CancelledError):
        await other
    assert task.cancelling() == 0


async def test_deadlines_sharing_a_timer_slot_each_cut_at_their_own_moment() -> None:
    """Under asyncio the deadlines of many requests share one timer per slot of the clock
    (deadline._Slots): each block is still cut at its own deadline, never before it, and a
    block that left its slot is not cut."""
    if not native_expected():
        pytest.skip("asyncio's timer slots")
    start = now()
    cut_at: dict[int, float] = {}
    left: list[int] = []

    async def block(i: int) -> None:
        end = start + 0.05 + i * 0.0007  # 30 deadlines over ~20 ms: a few slots, shared
        with deadline(end, True) as cut:
            if i % 2:
                await asyncio.sleep(0)
                left.append(i)
            else:
                await asyncio.sleep(5)
        if cut.expired:
            cut_at[i] = now() - end

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(block, i)
    assert sorted(left) == list(range(1, 30, 2))
    assert sorted(cut_at) == list(range(0, 30, 2))  # only those still inside, each cut
    assert all(late >= -0.002 for late in cut_at.values())  # not early (timer resolution)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_deadline_slot_keeps_no_requests_context_alive() -> None:
    """A slot's timer lives until the slot is due, a timeout later: it ran in a copy of the
    context of the request that opened the slot, so whatever that request's context
    variables held stayed alive with it (issue 16)."""
    if not native_expected():
        pytest.skip("asyncio's timer slots")
    import contextvars
    import gc
    import weakref

    var: contextvars.ContextVar[object] = contextvars.ContextVar("held")

    class Held:
        pass

    async def request() -> weakref.ref[Held]:
        held = Held()
        var.set(held)
        with deadline(now() + 60, True) as cut:  # opens a slot due in a minute
            await asyncio.sleep(0)
        assert not cut.expired
        return weakref.ref(held)

    ref = await asyncio.get_running_loop().create_task(request())  # a context of its own
    await asyncio.sleep(0)  # the loop lets go of the task's wake-up
    gc.collect()
    assert ref() is None
