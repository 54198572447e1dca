"""The official OpenAI SDK, sync and async, plain and streamed, through the gateway (uvicorn
on 127.0.0.1) to the real llama.cpp server. Temperature 0 is not reproducible there: no test
asserts exact text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from squirrel_models_gateway import GatewayThread

from ..support import secret_scanner
from ..support.llama_server import LlamaServer
from .conftest import LLAMA_KEY, TEAM_KEY, gateway, llama_config

ASK = [{"role": "system", "content": "Answer in a few words."},
       {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def llama_gw(llama_server: LlamaServer) -> Iterator[GatewayThread]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQUIRREL_TEST_LLAMA_KEY", LLAMA_KEY)
        with gateway(llama_config(llama_server)) as thread:
            yield thread


def test_sync_plain_and_streamed(openai_module: Any, llama_gw: GatewayThread) -> None:
    client = openai_module.OpenAI(base_url=llama_gw.base_url, api_key=TEAM_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="llama/smollm2", messages=ASK,
                                                           max_tokens=12, temperature=0)
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert 0 < resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 0
    assert raw.headers["x-squirrel-model"] == "llama/smollm2" and raw.headers["x-squirrel-cost"] == "0"
    chunks = list(client.chat.completions.create(model="small", messages=ASK, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    # llama.cpp's streams carry no usage: the gateway counted it
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 12
    assert [m.id for m in client.models.list()] == ["llama/smollm2", "small", "auto"]
    secret_scanner.collect(raw.http_response.text, str(dict(raw.headers)))


@pytest.mark.anyio
async def test_async_plain_and_streamed(openai_module: Any, llama_gw: GatewayThread) -> None:
    client = openai_module.AsyncOpenAI(base_url=llama_gw.base_url, api_key=TEAM_KEY, max_retries=0)
    try:
        resp = await client.chat.completions.create(model="auto", messages=ASK, max_tokens=8)
        assert resp.model == "llama/smollm2" and resp.choices[0].message.content.strip()
        stream = await client.chat.completions.create(model="llama/smollm2", messages=ASK, max_tokens=8,
                                                      stream=True)
        async with stream:  # the SDK's event generators are closed with it (trio warns otherwise)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts).strip()
        with pytest.raises(openai_module.AuthenticationError):
            await client.with_options(api_key=LLAMA_KEY).chat.completions.create(
                model="auto", messages=ASK, max_tokens=8)
    finally:
        await client.close()
