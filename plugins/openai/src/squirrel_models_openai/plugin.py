"""The plugin registered through the ``squirrel_models`` entry point: the ``openai`` provider
type and exact tiktoken counts for OpenAI models."""

from __future__ import annotations

import functools
from collections.abc import Callable

from squirrel_models.hookspecs import hookimpl
from squirrel_models.providers import Provider, ProviderSpec, ProviderType
from squirrel_models.types import AIRequest, ModelCard, TokenCount

from ._cards import TYPE_NAME
from .options import OpenAIOptions

__all__ = ["count_tokens", "register_providers"]


def _factory(spec: ProviderSpec) -> Provider:
    from .provider import OpenAIProvider

    return OpenAIProvider.from_spec(spec)


@hookimpl
def register_providers() -> list[ProviderType]:
    return [ProviderType(TYPE_NAME, _factory, OpenAIOptions,
                         "any OpenAI-compatible chat completions API (OpenAI, vLLM, llama.cpp, Ollama...)")]


@functools.cache
def _counters() -> tuple[Callable[..., TokenCount | None], Callable[..., TokenCount | None]]:
    # Imported on first use (tiktoken's encodings are not loaded with the plugin), then kept:
    # the core asks for a count on every budgeted request, and an import statement costs
    # about 0.8 us a call.
    from ._tokens import count_request, count_text

    return count_request, count_text


@hookimpl
def count_tokens(model: ModelCard, provider: Provider, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    """Exact tiktoken counts for models whose encoding is known (by name, or the provider's
    ``encoding`` option); None otherwise, so the core falls back to its upper bound."""
    if model.provider_type != TYPE_NAME:
        return None
    count_request, count_text = _counters()
    options = getattr(provider, "options", None)
    encoding = options.encoding if isinstance(options, OpenAIOptions) else None
    if request is not None:
        return count_request(model.model, request, encoding)
    return count_text(model.model, text or "", encoding)
