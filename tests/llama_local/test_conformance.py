"""The core's provider conformance suite, on the real SmolLM2 model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from squirrel_models.providers import ProviderSpec
from squirrel_models.testing.conformance import ProviderConformance
from squirrel_models_llama_local import LlamaLocalOptions, LlamaLocalProvider

pytestmark = pytest.mark.anyio


class TestLlamaLocalConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, smol_path: Path) -> AsyncIterator[LlamaLocalProvider]:
        p = LlamaLocalProvider(ProviderSpec("local", "llama-local", LlamaLocalOptions(models=(str(smol_path),))))
        await p.list_models()
        yield p
        await p.aclose()
