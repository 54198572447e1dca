"""A local generation cut short before its answer (or a stream before its first chunk) is
charged what the model read and generated, which llama-local knows (usage ``counted``), not
the worst case ``[budget] charge_unanswered`` assumes when nobody knows (the whole output
cap, usage ``cut``). The model is free: the tokens are what the ledger shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest

pytestmark = pytest.mark.anyio

LONG = AIRequest.from_prompt("Write a long story about a squirrel.", max_tokens=400)
#: A prompt the model reads for a while (about 1,500 tokens): a stream cut at 0.2 s has no chunk.
BIG = AIRequest.from_prompt("Summarise: " + " ".join(f"word{i}" for i in range(500)), max_tokens=64)


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("cut", ["caller", "deadline"])
async def test_a_cut_generation_is_charged_what_it_read_and_generated(
        smol_path: Path, streamed: bool, cut: str) -> None:
    cfg: dict[str, Any] = {"providers": [{"name": "local", "type": "llama-local",
                                          "options": {"models": [str(smol_path)], "n_threads": 1,
                                                      "n_ctx": 2048}}],
                           "fallback": {"max_attempts": 1}}
    async with ModelManager(cfg) as mm:
        (card,) = mm.models.values()
        await mm.complete(AIRequest.from_prompt("Say hi.", max_tokens=2))  # loaded
        # A stream is cut while the model still reads its prompt (no chunk yet); a call
        # while it writes its answer.
        request, after = (BIG, 0.2) if streamed else (LONG, 0.5)
        prompt = mm.providers["local"].count_tokens(card, request, None).tokens  # type: ignore[attr-defined]
        with anyio.move_on_after(after if cut == "caller" else 30):
            try:
                if streamed:
                    async with mm.stream(request, timeout=after if cut == "deadline" else 30) as s:
                        async for _ in s:
                            pass
                else:
                    await mm.complete(request, timeout=after if cut == "deadline" else 30)
            except TimeoutError:  # DeadlineExceeded
                pass
        rows = await mm.budget_backend.rows()  # type: ignore[attr-defined]
    row = rows[-1]
    assert row.outcome == "error"
    assert (row.usage_source, row.input_tokens) == ("counted", prompt)
    assert row.output_tokens < request.max_tokens  # what it generated, not the cap assumed


#: A stop string the tiny model never writes (it writes printable ASCII only): the generation
#: holds back its last len - 1 characters, so the model has always generated 7 tokens (one a
#: character) more than the caller received.
NEVER = "\u00e9" * 8
HELD = len(NEVER) - 1


@pytest.mark.parametrize("cut", ["break", "caller", "deadline"])
async def test_a_stream_cut_after_its_first_chunk_is_charged_what_the_model_read_and_generated(
        tiny_dir: Path, squirrel_manager: Any, squirrel_metrics: Any, cut: str) -> None:
    """Left by ``break``, cancelled by its caller while waiting for the next piece, or cut by
    the request's deadline: the ledger holds the model's own count (the prompt it read and
    every token it generated, also those the caller never received), not the core's count of
    the text received. The token metric reports the same counts."""
    cfg: dict[str, Any] = {"providers": [{"name": "local", "type": "llama-local",
                                          "options": {"models": [str(tiny_dir / "tiny-a.gguf")],
                                                      "n_threads": 1}}],
                           "fallback": {"max_attempts": 1}}
    # About 2,000 tokens: 0.6 s or more of generation, cut well before its end.
    request = AIRequest.from_prompt("Go on and on.", max_tokens=2000, stop=(NEVER,))
    async with squirrel_manager(cfg) as mm:
        (card,) = mm.models.values()
        await mm.complete(AIRequest.from_prompt("Say hi.", max_tokens=2))  # loaded
        prompt = mm.providers["local"].count_tokens(card, request, None).tokens
        with anyio.move_on_after(30) as outer:
            try:
                async with mm.stream(request, timeout=0.25 if cut == "deadline" else 30) as s:
                    async for _ in s:
                        if cut == "break":
                            break
                        if cut == "caller":  # delivered while it waits for the next piece
                            outer.cancel()
            except TimeoutError:  # DeadlineExceeded
                pass
        assert cut != "caller" or outer.cancelled_caught
        rows = await mm.budget_backend.rows()
    assert s.response is not None and s.response.finish_reason is None  # cut before its end
    row = rows[-1]
    assert (row.usage_source, row.input_tokens) == ("counted", prompt)
    assert s.text and len(s.text) + HELD <= row.output_tokens < request.max_tokens
    assert (s.response.usage.input_tokens, s.response.usage.output_tokens) == (
        row.input_tokens, row.output_tokens)
    assert row.error_type == {"break": None, "caller": None, "deadline": "ProviderTimeout"}[cut]
    tokens = {kind: squirrel_metrics.total("gen_ai.client.token.usage", **{"gen_ai.token.type": kind})
              for kind in ("input", "output")}
    assert tokens == {"input": sum(r.input_tokens for r in rows),
                      "output": sum(r.output_tokens for r in rows)}


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_request_cut_while_queued_for_the_model_costs_nothing(
        tiny_dir: Path, squirrel_manager: Any, streamed: bool) -> None:
    """The model never read it: no tokens (not the worst case charge_unanswered assumes of a
    request that may have reached a provider), recorded as the deadline's timeout."""
    cfg: dict[str, Any] = {"providers": [{"name": "local", "type": "llama-local",
                                          "options": {"models": [str(tiny_dir / "tiny-a.gguf")],
                                                      "n_threads": 1}}],
                           "fallback": {"max_attempts": 1}}
    queued = AIRequest.from_prompt("Say hi.", max_tokens=50)
    async with squirrel_manager(cfg) as mm:
        await mm.complete(AIRequest.from_prompt("Say hi.", max_tokens=2))  # loaded
        # The first request keeps the model busy (about 2,000 tokens: 0.6 s or more).
        async with mm.stream(AIRequest.from_prompt("Go on and on.", max_tokens=2000)) as first:
            async for _ in first:
                break
            with pytest.raises(TimeoutError):  # DeadlineExceeded
                if streamed:
                    async with mm.stream(queued, timeout=0.2) as s:
                        async for _ in s:
                            pass
                else:
                    await mm.complete(queued, timeout=0.2)
        rows = await mm.budget_backend.rows()
    (cut,) = [r for r in rows if r.error_type == "ProviderTimeout"]
    assert (cut.input_tokens, cut.output_tokens, cut.usage_source) == (0, 0, "reported")
