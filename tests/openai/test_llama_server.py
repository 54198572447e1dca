"""Against a real OpenAI-compatible server: llama.cpp serving SmolLM2-135M-Instruct.

Temperature 0 is not reproducible on this server: never assert exact text.
"""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AuthenticationError, ModelOverride
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.llama_server import LlamaServer
from ..support.llama_suite import LlamaServerSuite

pytestmark = pytest.mark.anyio


def make(server: LlamaServer, **options: Any) -> OpenAIProvider:
    options.setdefault("api_key_env", "SQUIRREL_TEST_LLAMA_KEY")
    return OpenAIProvider("local", OpenAIOptions(base_url=server.base_url, **options),
                          models=[ModelOverride("smollm2", context_window=2048)])


class TestAgainstLlamaServer(LlamaServerSuite):
    provider_type, name, key_option, key_env = "openai", "local", "api_key_env", "SQUIRREL_TEST_LLAMA_KEY"
    make = staticmethod(make)


async def test_wrong_key(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUIRREL_TEST_WRONG_KEY", "sk-wrong-key-0000")
    p = make(llama_server, api_key_env="SQUIRREL_TEST_WRONG_KEY")
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.list_models()
        assert info.value.status_code == 401 and "sk-wrong" not in str(info.value)
    finally:
        await p.aclose()
