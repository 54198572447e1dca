"""A llama-local provider forked while one of its models generates (a worker forked from a
server that loaded the application first): the child serves its own requests and closes,
the parent's generation goes on.

Before: the child inherited the parent's turn on the model (its queue held by a request that
was never going to end there) and its first request waited forever; with it, closing the
provider in the child would have waited forever for the parent's generation."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
from squirrel_models.providers import ProviderSpec
from squirrel_models.types import AIRequest
from squirrel_models_llama_local import LlamaLocalOptions, LlamaLocalProvider

from tests.support.forked import in_forked_child

from .test_close import LONG, writing

__all__ = ["writing"]  # the fixture

SHORT = AIRequest.from_prompt("Say hi.", max_tokens=8)


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .tinygguf import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("fork") / "tiny-fork.gguf", n_ctx=4096)


def test_a_child_forked_mid_generation_serves_and_closes(tiny_long: Path, writing: threading.Event) -> None:
    p = LlamaLocalProvider(ProviderSpec("local", "llama-local", LlamaLocalOptions(models=(str(tiny_long),))))
    (card,) = anyio.run(p.list_models)
    done: list[int] = []

    def parents_request() -> None:  # on an event loop of its own, in another thread
        done.append(anyio.run(p.complete, card, LONG).usage.output_tokens)

    parent = threading.Thread(target=parents_request)
    parent.start()
    try:
        assert writing.wait(60)

        def child() -> tuple[int, bool]:
            resp = anyio.run(p.complete, card, SHORT)
            anyio.run(p.aclose)
            return resp.usage.output_tokens, p.loaded_models() == []

        kind, answer = in_forked_child(child)
        assert (kind, answer) == ("returned", (SHORT.max_tokens, True))
    finally:
        parent.join(60)
        anyio.run(p.aclose)
    assert done == [LONG.max_tokens]  # the tiny model writes to its cap
