"""A local transformers generation cut short (a deadline, the caller's cancellation, a stream
closed early) is charged what the model read and generated (usage ``counted``: the prompt's
tokens and every token generated, also those the caller never received), not the worst case
``[budget] charge_unanswered`` assumes when nobody knows (the whole output cap, ``cut``); one
cut while it still waited for the model's turn, nothing. A tiny random LlamaForCausalLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest
from squirrel_models_huggingface import HuggingFaceProvider

from .conftest import needs_local
from .test_local import make

pytestmark = [pytest.mark.anyio, needs_local]

#: The window of the model these tests cut: 4,000 tokens take seconds (3 ms a token under
#: load, about 1 idle), so a cut at 0.3 s always finds the generation running.
WINDOW = 4096
LONG = AIRequest.from_prompt("Go on and on.", max_tokens=WINDOW - 96)


def config(folder: Path) -> dict[str, Any]:
    return {"providers": [{"name": "loc", "type": "huggingface",
                           "options": {"model_path": str(folder), "threads": 1},
                           "models": [{"name": folder.name, "price": {"input": 0, "output": 0}}]}],
            "fallback": {"max_attempts": 1}}


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (same seed) with a 4,096-token window (the greedy answer to LONG runs to its cap:
    it never writes the end token)."""
    from .tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long") / "tiny-llama", context=WINDOW)


@pytest.fixture
async def local(long_model: Path) -> AsyncIterator[HuggingFaceProvider]:
    p = make(long_model)
    yield p
    await p.aclose()


async def test_a_stream_closed_early_says_what_the_model_read_and_generated(
        local: HuggingFaceProvider) -> None:
    (card,) = await local.list_models()
    it = local.stream(card, LONG).__aiter__()
    first = await it.__anext__()
    await it.aclose()  # type: ignore[attr-defined]
    counted = getattr(it, "usage", None)
    prompt = local.count(card, LONG, None)
    assert prompt is not None and counted is not None and counted.source == "counted"
    assert counted.input_tokens == prompt.tokens
    assert 1 <= counted.output_tokens < LONG.max_tokens  # type: ignore[operator]
    assert first.text


@pytest.mark.parametrize("cut", ["break", "caller"])
async def test_a_stream_cut_after_its_first_chunk_is_charged_the_models_count(
        long_model: Path, squirrel_manager: Any, squirrel_metrics: Any, cut: str) -> None:
    """The ledger holds what the provider counted on the stream it returned (the iterator's
    ``usage`` once closed), not the core's count of the text that reached the caller."""
    async with squirrel_manager(config(long_model)) as mm:
        provider = mm.providers["loc"]
        streams: list[Any] = []
        original = provider.stream

        def recording(card: Any, request: AIRequest) -> Any:
            streams.append(original(card, request))
            return streams[-1]

        provider.stream = recording
        with anyio.CancelScope() as scope:
            async with mm.stream(LONG) as s:
                async for _ in s:
                    if cut == "break":
                        break
                    scope.cancel()  # delivered while it waits for the next token
        rows = await mm.budget_backend.rows()
    (row,) = rows
    (it,) = streams
    counted = it.usage
    assert counted is not None and counted.source == "counted"
    assert (row.usage_source, row.input_tokens, row.output_tokens) == (
        "counted", counted.input_tokens, counted.output_tokens)
    assert s.response is not None and s.response.finish_reason is None  # cut before its end
    assert squirrel_metrics.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) \
        == row.output_tokens


@pytest.mark.parametrize("cut", ["caller", "deadline"])
async def test_a_call_cut_while_generating_is_charged_what_the_model_read_and_generated(
        long_model: Path, squirrel_manager: Any, cut: str) -> None:
    async with squirrel_manager(config(long_model)) as mm:
        (card,) = mm.models.values()
        backend = mm.providers["loc"].local
        prompt = mm.providers["loc"].count(card, LONG, None).tokens
        with anyio.move_on_after(10) as outer:
            async with anyio.create_task_group() as tg:
                async def cut_once_generating() -> None:
                    while not backend.generate_lock.locked():  # the model took the request
                        await anyio.sleep(0.001)
                    await anyio.sleep(0.02)  # a few tokens
                    outer.cancel()

                if cut == "caller":
                    tg.start_soon(cut_once_generating)
                try:
                    await mm.complete(LONG, timeout=None if cut == "caller" else 0.3)
                except TimeoutError:  # DeadlineExceeded
                    pass
                else:
                    pytest.fail("the answer came before the cut")
        rows = await mm.budget_backend.rows()
    (row,) = rows
    assert (row.usage_source, row.input_tokens) == ("counted", prompt)
    assert row.output_tokens < LONG.max_tokens  # type: ignore[operator]  (what it generated, not the cap)


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_call_cut_while_waiting_for_the_models_turn_costs_nothing(
        long_model: Path, squirrel_manager: Any, streamed: bool) -> None:
    async with squirrel_manager(config(long_model)) as mm:
        backend = mm.providers["loc"].local
        backend.generate_lock.acquire()  # another generation holds the model
        try:
            with pytest.raises(TimeoutError):  # DeadlineExceeded
                if streamed:
                    async with mm.stream(LONG, timeout=0.3) as s:
                        async for _ in s:
                            pass
                else:
                    await mm.complete(LONG, timeout=0.3)
        finally:
            backend.generate_lock.release()
        rows = await mm.budget_backend.rows()
    (row,) = rows
    assert (row.error_type, row.usage_source, row.input_tokens, row.output_tokens) == (
        "ProviderTimeout", "reported", 0, 0)
