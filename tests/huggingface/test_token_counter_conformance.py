"""The huggingface plugin's count_tokens hook passes the core's TokenCounterConformance on a
loaded local model (the tiny LlamaForCausalLM with a byte-level BPE tokenizer and a chat
template), its text counts pinned to the tokenizer itself (``tokenizers``, loaded on its own
from the model folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelCard
from squirrel_models.testing.conformance import TokenCounterConformance
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider, plugin

from .conftest import needs_local

pytestmark = needs_local

TEXTS = ["", "hello", "Hello, world! 123", "naïve café 東京 🐿️", "a" * 300]


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> Iterator[tuple[HuggingFaceProvider, ModelCard]]:
    p = HuggingFaceProvider("loc", HuggingFaceOptions(model_path=str(tiny_model), threads=1))
    assert p.local is not None
    card = anyio.run(p.local.load)  # counts come from a loaded model only
    yield p, card
    anyio.run(p.aclose)


class TestLocalCounts(TokenCounterConformance):
    huge = 1 << 16

    @pytest.fixture
    def counter(self) -> object:
        return plugin

    @pytest.fixture
    def provider(self, loaded: tuple[HuggingFaceProvider, ModelCard]) -> Any:
        return loaded[0]

    @pytest.fixture
    def card(self, loaded: tuple[HuggingFaceProvider, ModelCard], tiny_model: Path) -> ModelCard:
        from tokenizers import Tokenizer

        # pytest binds a class's fixtures to the instance running the test: known_counts reads this
        tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
        self.reference = [(t, len(tokenizer.encode(t, add_special_tokens=False).ids)) for t in TEXTS]
        return loaded[1]

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        reference: list[tuple[AIRequest | str, int]] = self.reference
        return reference
