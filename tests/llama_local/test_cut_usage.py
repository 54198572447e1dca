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
