"""The core's HTTP provider conformance kit, against its fake OpenAI-style server, on both of
the plugin's transports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from squirrel_models import ModelOverride
from squirrel_models.testing.conformance import HTTPProviderConformance
from squirrel_models.testing.fake_server import FakeServer
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from .conftest import CANARY, CANARY_ENV

pytestmark = pytest.mark.anyio


class TestOpenAIConformance(HTTPProviderConformance):
    @pytest.fixture(params=["httpx", "auto"])  # auto: aiohttp under asyncio
    async def provider(self, request: pytest.FixtureRequest, fake_server: FakeServer, canary_env: str
                       ) -> AsyncIterator[OpenAIProvider]:
        options = OpenAIOptions(base_url=fake_server.base_url, api_key_env=CANARY_ENV, timeout=self.timeout,
                                transport=request.param)
        p = OpenAIProvider("conf", options, models=[ModelOverride("ok", features=frozenset({"+tools"}))],
                           discover=False)
        yield p
        await p.aclose()

    @pytest.fixture
    def secrets(self) -> list[str]:
        return [CANARY]
