"""Counts tokens with a SimpleProvider's own tokenizer (its ``count_tokens`` method), so
budgets reserve by the model's own count."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..types import AIRequest, ModelCard, TokenCount


@hookimpl(trylast=True)
def count_tokens(model: ModelCard, provider: Any, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    if not getattr(type(provider), "_simple_provider", False):
        return None  # not one: and squirrel_models.simple (and httpx) stays unimported
    from ..simple import count_with_provider

    return count_with_provider(model, provider, request, text)
