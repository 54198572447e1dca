"""The core's HTTP provider conformance kit, against its fake OpenAI-style server (the remote
side of the plugin: huggingface_hub's client)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from squirrel_models import ModelOverride
from squirrel_models.testing.conformance import HTTPProviderConformance
from squirrel_models.testing.fake_server import FakeServer
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from .conftest import CANARY, CANARY_ENV

pytestmark = pytest.mark.anyio


class TestHuggingFaceRemoteConformance(HTTPProviderConformance):
    @pytest.fixture
    async def provider(self, fake_server: FakeServer, canary_env: str) -> AsyncIterator[HuggingFaceProvider]:
        options = HuggingFaceOptions(base_url=fake_server.base_url, token_env=CANARY_ENV, timeout=self.timeout)
        p = HuggingFaceProvider("conf", options, models=[ModelOverride("ok", features=frozenset({"+tools"}))])
        yield p
        await p.aclose()

    @pytest.fixture
    def secrets(self) -> list[str]:
        return [CANARY]
