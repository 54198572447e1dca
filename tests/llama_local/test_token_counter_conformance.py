"""The llama-local plugin's count_tokens hook passes the core's TokenCounterConformance on a
tiny model (a byte-level vocabulary with merges, a ChatML template): every text and prompt
counted exactly, within the core's bounds, None for other plugins' models, and the text counts
equal to llama.cpp's own tokenizer's (the file loaded on its own, vocabulary only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from llama_cpp import Llama
from squirrel_models import AIRequest, ModelCard
from squirrel_models.providers import ProviderSpec
from squirrel_models.testing.conformance import TokenCounterConformance
from squirrel_models_llama_local import LlamaLocalOptions, LlamaLocalProvider, plugin

from .tinygguf import build_tiny_gguf

TEXTS = ["", "hello", "Hello, world! 123", "naïve café 東京 🐿️", "<|im_end|> literal", "a" * 300]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaLocalProvider, ModelCard, Path]]:
    path = build_tiny_gguf(tmp_path_factory.mktemp("count") / "tiny-count.gguf", n_ctx=2048)
    p = LlamaLocalProvider(ProviderSpec("local", "llama-local", LlamaLocalOptions(models=(str(path),))))
    (card,) = anyio.run(p.list_models)
    yield p, card, path
    anyio.run(p.aclose)


class TestLlamaLocalCounts(TokenCounterConformance):
    huge = 1 << 16  # the tiny vocabulary has few merges: about a token per byte

    @pytest.fixture
    def counter(self) -> object:
        return plugin

    @pytest.fixture
    def provider(self, tiny: tuple[LlamaLocalProvider, ModelCard, Path]) -> Any:
        return tiny[0]

    @pytest.fixture
    def card(self, tiny: tuple[LlamaLocalProvider, ModelCard, Path]) -> ModelCard:
        # pytest binds a class's fixtures to the instance running the test: known_counts reads this
        llm = Llama(str(tiny[2]), vocab_only=True, verbose=False)
        try:
            self.reference = [(t, len(llm.tokenize(t.encode(), add_bos=False, special=False))) for t in TEXTS]
        finally:
            llm.close()
        return tiny[1]

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        reference: list[tuple[AIRequest | str, int]] = self.reference
        return reference
