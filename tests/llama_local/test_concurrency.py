"""Cancellation (while the prompt is processed and while decoding), one generation at a time
per model with the rest queued, queue depth in live statistics, idle unloading."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import attrs
import pytest
from squirrel_models.errors import RateLimited
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest, ModelCard
from squirrel_models_llama_local.runtime import Generation

from .conftest import MakeProvider

pytestmark = pytest.mark.anyio

SHORT = AIRequest.from_prompt("Say hi.", max_tokens=8)


@attrs.frozen
class Ended:
    """How a generation ended, read when it closed: whether llama.cpp's abort callback
    stopped the prompt's processing, whether a token had come, and how many were written."""

    aborted: bool
    answered: bool
    output_tokens: int


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[Ended]:
    """Every generation's end, in order. The tests below prove an interruption by where
    the generation stood when it closed, not by wall time: a loaded machine (load 5 in a CI
    run) delivered a 0.1 s cancel of the prompt after 0.51 s, and a bound on the elapsed
    time failed although the abort callback did stop llama.cpp."""
    seen: list[Ended] = []
    close = Generation.close

    def spy(self: Generation) -> None:
        if self._llm is not None:  # the first close of a generation that ran
            seen.append(Ended(self._aborted, self.first_token_at is not None, self.output_tokens))
        close(self)

    monkeypatch.setattr(Generation, "close", spy)
    return seen


async def test_cancel_while_decoding(make_provider: MakeProvider, smol_path: Path,
                                     ended: list[Ended], monkeypatch: pytest.MonkeyPatch) -> None:
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    # 400 tokens take several seconds even at the model's 85 tokens/s on an idle machine
    long = AIRequest.from_prompt("Write a long story about a squirrel.", max_tokens=400)
    got_first = False
    with anyio.CancelScope() as scope:
        async for chunk in p.stream(card, long):
            if chunk.text and not got_first:
                got_first = True
                scope.cancel()
    assert got_first
    # non-streaming, cancelled from outside once it writes (a fixed delay may still fall in
    # the prompt on a loaded machine)
    writing = threading.Event()
    step = Generation.step

    def spy(self: Generation) -> str | None:
        if self.output_tokens:
            writing.set()
        return step(self)

    monkeypatch.setattr(Generation, "step", spy)

    async def cancel_once_writing() -> None:
        while not writing.is_set():
            await anyio.sleep(0.01)
        scope.cancel()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_writing)
            await p.complete(card, long)
    # both stopped while writing, far before the cap: the cancel reached the decoding loop
    assert [(e.aborted, e.answered) for e in ended] == [(False, True)] * 2, ended
    assert all(e.output_tokens < long.max_tokens // 2 for e in ended), ended
    assert p.live_stats(card)["queue_depth"] == 0
    resp = await p.complete(card, SHORT)  # the model is free and works
    assert resp.text and resp.usage.output_tokens <= 8


async def test_cancel_while_processing_prompt(make_provider: MakeProvider, smol_path: Path,
                                              ended: list[Ended], monkeypatch: pytest.MonkeyPatch) -> None:
    p = await make_provider(models=(str(smol_path),), n_ctx=2048)
    (card,) = await p.list_models()
    words = " ".join(f"word{i}" for i in range(500))
    big = AIRequest.from_prompt(f"Summarise: {words}", max_tokens=4)
    assert p.count_tokens(card, big, None).tokens > 1000  # type: ignore[union-attr]
    await p.complete(card, SHORT)  # loaded: what follows cuts the prompt, not the load
    # cancelled once the generation has set llama.cpp's abort callback up (its next step
    # processes the prompt): a fixed 0.1 s could fall before that on a loaded machine, and the
    # request was then cut before it reached the model at all
    started = threading.Event()
    start = Generation.start

    def spy(self: Generation) -> None:
        start(self)
        started.set()

    monkeypatch.setattr(Generation, "start", spy)

    async def cancel_once_started() -> None:
        while not started.is_set():
            await anyio.sleep(0.005)
        scope.cancel()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_started)
            await p.complete(card, big)
    assert scope.cancelled_caught
    # llama.cpp's abort callback stopped the prompt's one llama_decode call: no token came
    assert (ended[-1].aborted, ended[-1].answered) == (True, False), ended
    resp = await p.complete(card, SHORT)  # the model was reset and works
    assert resp.text and resp.usage.input_tokens == p.count_tokens(card, SHORT, None).tokens  # type: ignore[union-attr]
    assert not ended[-1].aborted


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
