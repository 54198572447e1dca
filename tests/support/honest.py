"""An honest upstream for budget tests (no hypothesis here: worker processes import it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import anyio
import anyio.lowlevel
import attrs
from squirrel_models import AIRequest, ModelCard, Price, ProviderResponse, ServerError, StreamChunk, Usage

__all__ = ["CARD", "PRICE", "WORD", "HonestUpstream"]

PRICE = Price(Decimal("2"), Decimal("8"))  # USD per million tokens
WORD = "word" * 10 + " "  # 41 bytes: one token for the upstream, 41 for a byte bound


@attrs.define
class HonestUpstream:
    """A provider that generates one token per word, stops at the ``max_tokens`` it is sent
    and reports usage on answers (streams carry none, like llama.cpp's server). A request's
    ``metadata["mode"]`` picks a behaviour: ``stall`` (a stream that stalls after its first
    chunk), ``break`` (a stream that breaks mid-way, reporting nothing)."""

    name: str
    models: list[ModelCard]
    words: int = 200

    async def list_models(self) -> list[ModelCard]:
        return self.models

    def _n(self, request: AIRequest) -> int:
        return min(self.words, request.max_tokens or self.words)

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        n = self._n(request)
        return ProviderResponse(WORD * n, Usage(len(request.messages[0].content.split()) + 8, n),
                                "length")

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        mode = request.metadata.get("mode", "")
        for i in range(self._n(request)):
            if i == 1 and mode == "stall":
                await anyio.sleep(3600)
            if i == 3 and mode == "break":
                raise ServerError("connection reset mid-stream")
            await anyio.lowlevel.checkpoint()
            yield StreamChunk(WORD)
        yield StreamChunk("", None, "length")

    async def aclose(self) -> None:
        return None


CARD = ModelCard.for_provider("h", "m", provider_type="honest", price=PRICE, context_window=4096,
                              max_output_tokens=512, features={"streaming", "system_prompt"})


