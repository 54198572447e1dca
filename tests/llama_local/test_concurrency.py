"""Cancellation (while the prompt is processed and while decoding), one generation at a time
per model with the rest queued, queue depth in live statistics, idle unloading."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from squirrel_models.errors import RateLimited
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest, ModelCard

from .conftest import MakeProvider

pytestmark = pytest.mark.anyio

SHORT = AIRequest.from_prompt("Say hi.", max_tokens=8)


async def test_cancel_while_decoding(make_provider: MakeProvider, smol_path: Path) -> None:
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    long = AIRequest.from_prompt("Write a long story about a squirrel.", max_tokens=400)
    got_first = anyio.Event()
    t_cancel = 0.0
    with anyio.CancelScope() as scope:
        async for chunk in p.stream(card, long):
            if chunk.text and not got_first.is_set():
                got_first.set()
                t_cancel = time.perf_counter()
                scope.cancel()
    stopped = time.perf_counter() - t_cancel
    # The bounds say "interrupted", not "fast": 400 tokens take several seconds even at the
    # model's 85 tokens/s on an idle machine, and a loaded one (load 9: 0.59 s against a
    # bound of 0.5) must not turn a prompt cancel into a failure.
    assert got_first.is_set() and stopped < 1.5
    # non-streaming, cancelled from outside mid-decoding
    t0 = time.perf_counter()
    with anyio.move_on_after(0.3):
        await p.complete(card, long)
    assert time.perf_counter() - t0 < 0.3 + 1.5
    assert p.live_stats(card)["queue_depth"] == 0
    resp = await p.complete(card, SHORT)  # the model is free and works
    assert resp.text and resp.usage.output_tokens <= 8


async def test_cancel_while_processing_prompt(make_provider: MakeProvider, smol_path: Path) -> None:
    p = await make_provider(models=(str(smol_path),), n_ctx=2048)
    (card,) = await p.list_models()
    words = " ".join(f"word{i}" for i in range(500))
    big = AIRequest.from_prompt(f"Summarise: {words}", max_tokens=4)
    assert p.count_tokens(card, big, None).tokens > 1000  # type: ignore[union-attr]
    await p.complete(card, SHORT)  # loaded: what follows times the prompt, not the load
    t0 = time.perf_counter()
    with anyio.move_on_after(0.1) as scope:
        await p.complete(card, big)
    elapsed = time.perf_counter() - t0
    assert scope.cancelled_caught
    assert elapsed < 0.4, f"prompt processing was not interrupted ({elapsed:.2f}s)"
    resp = await p.complete(card, SHORT)
    assert resp.text and resp.usage.input_tokens == p.count_tokens(card, SHORT, None).tokens  # type: ignore[union-attr]


async def _wait_for(pred: object, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():  # type: ignore[operator]
            await anyio.sleep(0.002)


async def test_requests_queue_one_at_a_time(make_provider: MakeProvider, tiny_dir: Path) -> None:
    p = await make_provider(models=(str(tiny_dir / "tiny-a.gguf"),), max_queue=2)
    (card,) = await p.list_models()
    m = p.local_model(card.model)
    long = AIRequest.from_prompt("go", max_tokens=1500)
    order: list[int] = []
    running = 0
    peak = 0
    depths: list[float] = []

    async def one(i: int) -> None:
        nonlocal running, peak
        async for chunk in p.stream(card, long):
            if chunk.text and i not in order:
                order.append(i)
                running += 1
                peak = max(peak, running)
        running -= 1

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
            await _wait_for(lambda i=i: m.pending == i + 1)
        depths.append(p.live_stats(card)["queue_depth"])
        with pytest.raises(RateLimited):  # two waiting already: the fourth is refused
            await p.complete(card, SHORT)
    assert depths == [3.0]
    assert order == [0, 1, 2] and peak == 1
    stats = p.live_stats(card)
    assert stats["queue_depth"] == 0 and stats["tokens_per_s"] > 0


async def test_busy_model_loses_to_idle_one(tiny_dir: Path) -> None:
    cfg = {"providers": [{"name": "local", "type": "llama-local",
                          "options": {"folder": str(tiny_dir)}}]}
    async with ModelManager(cfg) as mm:
        a, b = mm.models["local/tiny-a"], mm.models["local/tiny-b"]
        for card in (a, b):  # observe each model's latency once
            await mm.complete(SHORT, _only(card))
        p = mm.providers["local"]
        long = AIRequest.from_prompt("go", max_tokens=1500)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(mm.complete, long, _only(a))
            await _wait_for(lambda: p.live_stats(a)["queue_depth"] == 3)  # type: ignore[attr-defined]
            decision = mm.rank()
            assert decision.chosen is not None and decision.chosen.card.id == b.id
            busy = next(c for c in decision.candidates if c.card.id == a.id)
            idle = decision.chosen
            assert busy.scores["latency"] < idle.scores["latency"]
            tg.cancel_scope.cancel()
        assert p.live_stats(a)["queue_depth"] == 0  # type: ignore[attr-defined]


def _only(card: ModelCard) -> object:
    from squirrel_models.types import ModelRequirements

    return ModelRequirements(models=frozenset({card.id}))


async def test_idle_model_is_unloaded(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),), idle_unload_s=0.2)
    (card,) = await p.list_models()
    m = p.local_model(card.model)
    await p.complete(card, SHORT)
    assert p.loaded_models() == [card.model]
    await _wait_for(lambda: not m.loaded, timeout=3)
    await p.complete(card, SHORT)  # loaded again, lazily
    assert m.loads == 2 and m.loaded
    assert p.count_tokens(card, SHORT, None) is not None  # counting never needs the weights


async def test_closed_provider_unloads(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    await p.complete(card, SHORT)
    await p.aclose()
    assert p.loaded_models() == []
