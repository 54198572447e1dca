"""TokenCounterConformance: every built-in counter passes it: the core's upper bound (what
counts when no plugin answers), the built-in hook that asks a SimpleProvider's own tokenizer,
and the scripted test provider's exact word counts. (That it fails a wrong counter, one per
rule: tests/core/test_conformance_catches.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelCard, ProviderSpec, SimpleProvider, TokenCount, hookimpl
from squirrel_models.builtins import simple
from squirrel_models.testing import ScriptedPlugin
from squirrel_models.testing.conformance import TokenCounterConformance
from squirrel_models.testing.provider import TYPE_NAME
from squirrel_models.tokens import upper_bound

WORD_COUNTS: list[tuple[AIRequest | str, int]] = [
    ("one two three", 3), (" spaced   out ", 2), ("", 0), ("東京 🐿️", 2),
    (AIRequest.from_prompt("one two"), 4), (AIRequest.from_prompt("a b c", system="be brief"), 9)]


class UpperBound:
    """The core's fallback count (:func:`upper_bound`), as a counter for one kind of model."""

    @hookimpl
    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        return upper_bound(request, text) if model.provider_type == "bounded" else None


class TestUpperBound(TokenCounterConformance):
    @pytest.fixture
    def counter(self) -> object:
        return UpperBound()

    @pytest.fixture
    def card(self) -> ModelCard:
        return ModelCard.for_provider("b", "m", provider_type="bounded")

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        return WORD_COUNTS  # a tokenizer's counts the bound must cover


class Words(SimpleProvider):
    """A provider whose tokenizer makes a token of each word, and two of each message."""

    default_models = ("m",)

    async def generate(self, model: ModelCard, request: AIRequest) -> AsyncIterator[str]:
        yield "unused"

    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> int | None:
        if request is not None:
            return sum(len(m.text.split()) + 2 for m in request.messages)
        return len((text or "").split())




class TestSimpleProviderTokenizer(TokenCounterConformance):
    @pytest.fixture
    def counter(self) -> object:
        return simple

    @pytest.fixture
    def card(self) -> ModelCard:
        return ModelCard.for_provider("w", "m", provider_type="words")

    @pytest.fixture
    def provider(self) -> Any:
        return Words(ProviderSpec("w", "words", None))

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        return WORD_COUNTS


class TestScriptedWords(TokenCounterConformance):
    @pytest.fixture
    def counter(self) -> object:
        return ScriptedPlugin()

    @pytest.fixture
    def card(self) -> ModelCard:
        return ModelCard.for_provider("s", "m", provider_type=TYPE_NAME)

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        return WORD_COUNTS
