"""Closing the manager (or the provider) while a local model generates: the generation stops
within a token and is waited for before the weights are freed, the request ends in a typed
error carrying what the model read and generated, and the process lives on.

Before: ``LocalModel.close`` freed the llama.cpp model under the running generation's thread;
a stream closed that way killed the process (``malloc(): unsorted double linked list
corrupted``, SIGABRT) and a call ended in ``AttributeError: 'NoneType' object has no
attribute 'n_tokens'``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import SyncModelManager
from squirrel_models.errors import MidStreamError, SquirrelError
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest
from squirrel_models_llama_local.runtime import Generation

from .tinygguf import build_tiny_gguf

pytestmark = pytest.mark.anyio

#: Thousands of tokens: a second or more of generation, closed long before its end.
LONG = AIRequest.from_prompt("Go on and on.", max_tokens=4000)


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("long") / "tiny-long.gguf", n_ctx=4096)


def _config(path: Path) -> dict[str, Any]:
    return {"providers": [{"name": "local", "type": "llama-local",
                           "options": {"models": [str(path)], "n_threads": 1}}],
            "fallback": {"max_attempts": 1}}


@pytest.fixture
def writing(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a generation has written a token (it is decoding, the model in use)."""
    seen = threading.Event()
    step = Generation.step

    def spy(self: Generation) -> str | None:
        if self.output_tokens:
            seen.set()
        return step(self)

    monkeypatch.setattr(Generation, "step", spy)
    return seen


async def _when(event: threading.Event) -> None:
    with anyio.fail_after(60):
        while not event.is_set():
            await anyio.sleep(0.005)


async def test_closing_the_manager_under_a_stream(tiny_long: Path) -> None:
    mm = ModelManager(_config(tiny_long))
    await mm.start()
    provider = mm.providers["local"]
    chunks = 0
    with pytest.raises(MidStreamError) as info:
        async with mm.stream(LONG) as s:
            async for chunk in s:
                chunks += bool(chunk.text)
                if chunks == 3:
                    await mm.aclose()
    err = info.value
    assert "closed" in str(err) and err.usage is not None
    # what the model generated, at least what the caller got, far below the cap
    assert len(err.partial_text) <= err.usage.output_tokens < LONG.max_tokens
    assert provider.loaded_models() == []  # type: ignore[attr-defined]


async def test_closing_the_manager_under_a_call(tiny_long: Path, writing: threading.Event) -> None:
    mm = ModelManager(_config(tiny_long))
    await mm.start()
    provider = mm.providers["local"]
    failed: list[BaseException] = []

    async def call() -> None:
        try:
            await mm.complete(LONG)
        except SquirrelError as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await _when(writing)
        await mm.aclose()
    (err,) = failed
    assert "closed" in str(err)
    assert provider.loaded_models() == []  # type: ignore[attr-defined]


def test_closing_a_sync_manager_while_another_thread_waits_for_a_call(
        tiny_long: Path, writing: threading.Event) -> None:
    mm = SyncModelManager(_config(tiny_long))
    failed: list[BaseException] = []

    def call() -> None:
        try:
            mm.complete(LONG)
        except SquirrelError as exc:
            failed.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert writing.wait(60)
    mm.close()
    caller.join(60)
    assert not caller.is_alive()
    (err,) = failed
    assert "closed" in str(err)
    with pytest.raises(SquirrelError, match="closed"):
        mm.complete(AIRequest.from_prompt("hi", max_tokens=2))


async def test_a_closed_provider_refuses_at_once_and_is_not_retried(tiny_long: Path) -> None:
    from squirrel_models.providers import ProviderSpec
    from squirrel_models_llama_local import LlamaLocalOptions, LlamaLocalProvider

    p = LlamaLocalProvider(ProviderSpec("local", "llama-local", LlamaLocalOptions(models=(str(tiny_long),))))
    (card,) = await p.list_models()
    await p.aclose()
    for attempt in (p.complete(card, LONG), anext(aiter(p.stream(card, LONG)))):
        with pytest.raises(SquirrelError, match="closed") as info:
            await attempt
        assert not info.value.retryable and info.value.sent is False  # type: ignore[attr-defined]
    assert p.count_tokens(card, LONG, None) is None  # no tokenizer loaded again after close
    assert p.local_model(card.model)._vocab is None
