"""Through huggingface_hub's client against a real OpenAI-compatible server: llama.cpp serving
SmolLM2-135M-Instruct (what a self-hosted TGI or Inference Endpoint looks like to the client).

Temperature 0 is not reproducible on this server: never assert exact text.
"""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import AuthenticationError, ModelOverride
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.llama_server import LlamaServer
from ..support.llama_suite import PROMPT, LlamaServerSuite
from .conftest import LLAMA_KEY_ENV

pytestmark = pytest.mark.anyio


def make(server: LlamaServer, **options: Any) -> HuggingFaceProvider:
    options.setdefault("token_env", LLAMA_KEY_ENV)
    return HuggingFaceProvider("tgi", HuggingFaceOptions(base_url=server.base_url, **options),
                               models=[ModelOverride("smollm2", context_window=2048)])


class TestAgainstLlamaServer(LlamaServerSuite):
    provider_type, name, key_option, key_env = "huggingface", "tgi", "token_env", LLAMA_KEY_ENV
    make = staticmethod(make)


async def test_wrong_token(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUIRREL_TEST_HF_WRONG", "hf_wrong_token_0000")
    p = make(llama_server, token_env="SQUIRREL_TEST_HF_WRONG")
    try:
        (card,) = await p.list_models()
        with pytest.raises(AuthenticationError) as info:
            await p.complete(card, PROMPT)
        assert info.value.status_code == 401 and "hf_wrong" not in str(info.value)
    finally:
        await p.aclose()
