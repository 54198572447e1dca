"""The openai plugin's count_tokens hook (tiktoken, offline) passes the core's
TokenCounterConformance, its exact counts pinned to those OpenAI's API reported for the
cookbook's examples."""

from __future__ import annotations

import pytest
from squirrel_models import AIRequest, ModelCard
from squirrel_models.testing.conformance import TokenCounterConformance
from squirrel_models_openai import plugin

from .test_tokens import COOKBOOK


class TestTiktokenCounts(TokenCounterConformance):
    @pytest.fixture
    def counter(self) -> object:
        return plugin

    @pytest.fixture
    def card(self) -> ModelCard:
        return ModelCard.for_provider("openai", "gpt-4", provider_type="openai")

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        return [("tiktoken is great!", 6), (COOKBOOK, 129)]
