"""A large prompt is counted off the event loop, once per model, and its request still ends
at its deadline while a count runs (asyncio and trio). Before, the ranking and the attempt's
estimate each counted it on the event loop: tiktoken took about 0.5 s for 4 MB, during which
no other request of the process moved, and a deadline could not end the request."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    DeadlineExceeded,
    ModelCard,
    ModelManager,
    Price,
    ProviderResponse,
    TokenCount,
    Usage,
    hookimpl,
)
from squirrel_models.plugins import PluginManager
from squirrel_models.tokens import OFF_LOOP_TOKENS, upper_bound

pytestmark = pytest.mark.anyio

FREE = Price(Decimal(0), Decimal(0))
CARD = ModelCard.for_provider("p", "m", context_window=OFF_LOOP_TOKENS * 4, price=FREE)


class Counting:
    """A provider and the ``count_tokens`` hook of its tokenizer, noting the thread of each
    count of a prompt; ``hold``: each such count waits for it first."""

    name = "p"

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.threads: list[threading.Thread] = []
        self.hold = hold

    async def list_models(self) -> list[ModelCard]:
        return []

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        return ProviderResponse("ok", Usage(7, 1), "stop")

    @hookimpl
    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        if request is None:
            return TokenCount(len(text or "") // 8, True, "test")
        self.threads.append(threading.current_thread())
        if self.hold is not None:
            self.hold.wait(30)
        return TokenCount(sum(len(m.text) for m in request.messages) // 8, True, "test")

    async def aclose(self) -> None:
        pass


def manager(p: Counting, card: ModelCard, **config: Any) -> ModelManager:
    plugins = PluginManager(load_entry_points=False)
    plugins.register(p, "counting")
    mm = ModelManager({"fallback": {"max_attempts": 1}, **config}, plugins=plugins)
    mm.register_model(card, p)  # type: ignore[arg-type]
    return mm


def prompt(tokens_bound: int) -> AIRequest:
    # Its upper bound overflows the window: the ranking and the estimate need the count.
    request = AIRequest.from_prompt("a" * (tokens_bound + 1), max_tokens=8)
    assert upper_bound(request).tokens >= tokens_bound
    return request


async def test_a_large_prompt_is_counted_once_in_a_worker_thread() -> None:
    p = Counting()
    async with manager(p, CARD) as mm:
        resp = await mm.complete(prompt(OFF_LOOP_TOKENS * 5))
    assert resp.text == "ok"
    assert len(p.threads) == 1, p.threads  # the ranking's count serves the estimate too
    assert p.threads[0] is not threading.current_thread()


async def test_a_small_prompt_is_counted_where_it_is() -> None:
    """Below the threshold a thread's round trip would cost more than the count."""
    p = Counting()
    async with manager(p, ModelCard.for_provider("p", "m", context_window=1000, price=FREE)) as mm:
        await mm.complete(prompt(2000))
    assert p.threads and all(t is threading.current_thread() for t in p.threads)


async def test_the_deadline_ends_a_request_whose_prompt_is_being_counted() -> None:
    hold = threading.Event()
    p = Counting(hold)
    ended: list[Any] = []
    try:
        async with manager(p, CARD, timeout=0.5) as mm:
            with pytest.raises(DeadlineExceeded):
                await mm.complete(prompt(OFF_LOOP_TOKENS * 5))
            ended.append(hold.is_set())
    finally:
        hold.set()  # the abandoned count ends
    assert ended == [False]  # the request ended while its count was still held


class Hanging(Counting):
    """A provider that never answers: each attempt is cut."""

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        import anyio

        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover


@pytest.mark.parametrize("cut", ["deadline", "caller"])
async def test_a_cut_large_prompt_is_counted_off_the_event_loop(cut: str) -> None:
    """An attempt cut unanswered is charged by ``charge_unanswered``, which needs the
    prompt's count: a large prompt is counted in a worker thread there too (nothing else
    counted it: its bound fits the window, no budget, metrics not recording). Before, the
    failure path counted it on the event loop (about 0.5 s for 4 MB with tiktoken)."""
    import anyio

    p = Hanging()
    card = ModelCard.for_provider("p", "m", context_window=OFF_LOOP_TOKENS * 100, price=FREE)
    request = prompt(OFF_LOOP_TOKENS * 2)
    async with manager(p, card, timeout=0.5 if cut == "deadline" else 30) as mm:
        if cut == "deadline":
            with pytest.raises(DeadlineExceeded) as info:
                await mm.complete(request)
            (rec,) = info.value.attempts
            assert rec.usage is not None and rec.usage.source == "cut"
            assert rec.usage.input_tokens == sum(len(m.text) for m in request.messages) // 8
        else:
            with anyio.move_on_after(0.3):
                await mm.complete(request)
    assert p.threads, "the prompt was counted"
    assert all(t is not threading.current_thread() for t in p.threads), p.threads


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_prompt_whose_lower_bound_overflows_is_refused_uncounted(streamed: bool) -> None:
    """No tokenizer makes fewer than ``bytes / MAX_TOKEN_BYTES`` tokens: a prompt over the
    window by that count is refused without counting it. Before, it was counted in full
    first (a 10 MB prompt took llama-local's tokenizer 16 s, holding it from every other
    request of the model meanwhile); the refusal says "at least"."""
    from squirrel_models import CapabilityNotSupported
    from squirrel_models.tokens import MAX_TOKEN_BYTES

    p = Counting()
    card = ModelCard.for_provider("p", "m", context_window=1000, price=FREE)
    request = AIRequest.from_prompt("a" * (MAX_TOKEN_BYTES * 1000 + 1), max_tokens=8)
    async with manager(p, card) as mm:
        with pytest.raises(CapabilityNotSupported, match="needs at least 1009 tokens, context window is 1000"):
            if streamed:
                async with mm.stream(request):
                    pass
            else:
                await mm.complete(request)
    assert p.threads == []
