"""A prompt far beyond the window (10 MB) is refused at once through the manager, naming
the sizes, without running the model's tokenizer over it.

Before: the core counted it exactly first, 16 s of llama.cpp's tokenizer (holding it, so
every other request to the model waited, on the event loop), and a request given 2 s ended
by its deadline while the count went on: the next small request to the model then missed
its own 5 s deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models import CapabilityNotSupported
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest
from squirrel_models_llama_local.runtime import LocalModel

pytestmark = pytest.mark.anyio


async def test_a_10_mb_prompt_is_refused_without_tokenizing_it(smol_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    prompt_tokens = LocalModel.prompt_tokens

    def spy(self: LocalModel, messages: list[tuple[str, str]]) -> list[int]:
        sizes.append(sum(len(c) for _, c in messages))
        return prompt_tokens(self, messages)

    monkeypatch.setattr(LocalModel, "prompt_tokens", spy)
    cfg = {"providers": [{"name": "local", "type": "llama-local",
                          "options": {"models": [str(smol_path)], "n_ctx": 2048}}]}
    huge = AIRequest.from_prompt("word " * 2_000_000, max_tokens=8)
    async with ModelManager(cfg) as mm:
        with pytest.raises(CapabilityNotSupported, match=r"needs at least \d+ tokens, context window is 2048"):
            await mm.complete(huge, timeout=2)
        resp = await mm.complete(AIRequest.from_prompt("Say hi.", max_tokens=4))
    assert resp.text
    assert max(sizes) < 1000  # only the small request's prompt was tokenized
