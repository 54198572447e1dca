"""Real generation with SmolLM2 (kept short), streaming token by token, and exact token
counts checked against the model's own tokenizer and llama.cpp's reported usage."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_cpp import Llama
from squirrel_models.errors import ContextWindowExceeded, InvalidRequestError, ServerError
from squirrel_models.types import AIRequest, Message
from squirrel_models_llama_local.runtime import LocalModel

from .conftest import MakeProvider

pytestmark = pytest.mark.anyio

REQ = AIRequest.from_prompt("Name one colour.", system="Answer briefly.", max_tokens=12, temperature=0)


async def test_complete_real_model(make_provider: MakeProvider, smol_path: Path) -> None:
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    resp = await p.complete(card, REQ)
    assert resp.text.strip()
    assert resp.usage.source == "counted"
    assert 0 < resp.usage.output_tokens <= 12
    assert resp.finish_reason in ("stop", "length")
    exact = p.count_tokens(card, REQ, None)
    assert exact is not None and exact.exact
    assert resp.usage.input_tokens == exact.tokens
    assert p.loaded_models() == [card.model]


async def test_stream_token_by_token(make_provider: MakeProvider, smol_path: Path) -> None:
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    req = AIRequest.from_prompt("Count from one to ten in words.", max_tokens=16, temperature=0)
    chunks = [c async for c in p.stream(card, req)]
    text_chunks = [c for c in chunks if c.text]
    assert len(text_chunks) >= 3  # pieces arrive one token at a time, not in one block
    assert chunks[-1].usage is not None and chunks[-1].finish_reason in ("stop", "length")
    usage = chunks[-1].usage
    assert len(text_chunks) <= usage.output_tokens <= 16
    assert usage.input_tokens == p.count_tokens(card, req, None).tokens  # type: ignore[union-attr]


async def test_stop_strings_cut_the_text(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    full = await p.complete(card, AIRequest.from_prompt("hi", max_tokens=40, temperature=0))
    stop = full.text[10:12]
    cut = full.text[: full.text.find(stop)]
    resp = await p.complete(card, AIRequest.from_prompt("hi", max_tokens=40, temperature=0, stop=(stop,)))
    assert resp.text == cut and resp.finish_reason == "stop"
    streamed = "".join([c.text async for c in p.stream(
        card, AIRequest.from_prompt("hi", max_tokens=40, temperature=0, stop=(stop,)))])
    assert streamed == cut


def test_counts_match_llama_cpp_usage(smol_path: Path) -> None:
    """Our prompt count equals what llama.cpp itself reports for the same chat."""
    from squirrel_models_llama_local import read_gguf_metadata
    from squirrel_models_llama_local.runtime import ModelSettings

    m = LocalModel("smol", read_gguf_metadata(smol_path), ModelSettings(n_ctx=1024))
    llm = Llama(str(smol_path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        for messages in ([Message.user("Hi")],
                         [Message.system("Be terse."), Message.user("What is 2+2? Héllo, 世界 🙂")],
                         [Message.user("a"), Message("assistant", "b"), Message.user("<|im_end|> c")]):
            out = llm.create_chat_completion([{"role": x.role, "content": x.content} for x in messages],
                                             max_tokens=1)
            ours = m.prompt_tokens([(x.role, x.content) for x in messages])
            assert len(ours) == out["usage"]["prompt_tokens"]  # type: ignore[index]
        text = "The quick brown fox, 123 héllo 世界"
        assert m.count_text(text) == len(llm.tokenize(text.encode(), add_bos=False))
    finally:
        llm.close()
        m.close()


async def test_count_tokens_hook(make_provider: MakeProvider, smol_path: Path) -> None:
    from squirrel_models.plugins import PluginManager

    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    count = PluginManager().token_counter(lambda _: p)
    prompt = count(card, REQ, None)
    text = count(card, None, "Hello there, general Kenobi.")
    assert prompt is not None and prompt.exact and prompt.tokens > 10
    assert text is not None and text.exact and 3 <= text.tokens <= 10


async def test_context_overflow(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    with pytest.raises(ContextWindowExceeded) as info:
        await p.complete(card, AIRequest.from_prompt("x" * 400, max_tokens=8))
    assert info.value.window == 256 and info.value.needed is not None and info.value.needed > 256
    assert not info.value.retryable
    prompt = p.count_tokens(card, AIRequest.from_prompt("hello"), None).tokens  # type: ignore[union-attr]
    with pytest.raises(ContextWindowExceeded) as info:
        await p.complete(card, AIRequest.from_prompt("hello", max_tokens=256 - prompt + 1))
    assert info.value.needed == 257
    resp = await p.complete(card, AIRequest.from_prompt("hello", max_tokens=256 - prompt))
    assert resp.usage.output_tokens == 256 - prompt and resp.finish_reason == "length"


async def test_runtime_failure_is_server_error(make_provider: MakeProvider, tiny_small: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()

    def broken(self: LocalModel) -> None:
        raise RuntimeError("llama_decode returned -1")

    monkeypatch.setattr(LocalModel, "acquire", broken)
    with pytest.raises(ServerError, match="llama_decode returned -1"):
        await p.complete(card, AIRequest.from_prompt("hi", max_tokens=4))
    with pytest.raises(ServerError):
        async for _ in p.stream(card, AIRequest.from_prompt("hi", max_tokens=4)):
            pass


async def test_vanished_model_file_is_not_retried(make_provider: MakeProvider, tmp_path: Path,
                                                  tiny_small: Path) -> None:
    import shutil

    copy = tmp_path / "gone.gguf"
    shutil.copyfile(tiny_small, copy)
    p = await make_provider(models=(str(copy),))
    (card,) = await p.list_models()
    copy.unlink()  # lazily loaded: the failure shows at the first request
    with pytest.raises(ServerError, match="cannot load") as info:
        await p.complete(card, AIRequest.from_prompt("hi", max_tokens=4))
    assert not info.value.retryable


async def test_passed_through_fields_are_refused_for_the_next_candidate(
        make_provider: MakeProvider, tiny_small: Path) -> None:
    """OpenAI-format fields passed through (``AIRequest.extra``) cannot reach a local model:
    refused as model-specific, so the fallback chain tries the next candidate."""
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    req = AIRequest.from_openai({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}},
                                passthrough=["logit_bias"])
    with pytest.raises(InvalidRequestError) as info:
        await p.complete(card, req)
    assert info.value.model_specific and "logit_bias" in str(info.value)
