"""The plugin module behind the ``llama-local`` entry point: the provider type and exact
token counts from each local model's own tokenizer."""

from __future__ import annotations

from squirrel_models.hookspecs import hookimpl
from squirrel_models.providers import Provider, ProviderType
from squirrel_models.types import AIRequest, ModelCard, TokenCount

from .options import LlamaLocalOptions
from .provider import PROVIDER_TYPE, LlamaLocalProvider, factory

__all__ = ["count_tokens", "register_providers"]


@hookimpl
def register_providers() -> list[ProviderType]:
    return [ProviderType(
        PROVIDER_TYPE, factory, options_type=LlamaLocalOptions,
        description="GGUF models in this process through llama-cpp-python (no server, no key, price 0)")]


@hookimpl
def count_tokens(model: ModelCard, provider: Provider, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    if isinstance(provider, LlamaLocalProvider):
        return provider.count_tokens(model, request, text)
    return None
