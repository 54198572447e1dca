"""The plugin registered through the ``squirrel_models`` entry point: the ``huggingface``
provider type and exact token counts for local transformers models.

Nothing heavy is imported here: huggingface_hub (about 0.6 s), transformers and torch load
when a provider of this type is created or first used.
"""

from __future__ import annotations

from squirrel_models.hookspecs import hookimpl
from squirrel_models.providers import Provider, ProviderSpec, ProviderType
from squirrel_models.types import AIRequest, ModelCard, TokenCount

from ._cards import TYPE_NAME
from .options import HuggingFaceOptions

__all__ = ["count_tokens", "register_providers"]


def _factory(spec: ProviderSpec) -> Provider:
    from .provider import HuggingFaceProvider

    return HuggingFaceProvider.from_spec(spec)


@hookimpl
def register_providers() -> list[ProviderType]:
    return [ProviderType(TYPE_NAME, _factory, HuggingFaceOptions,
                         "Hugging Face Inference Providers, Endpoints, TGI and local transformers models")]


@hookimpl
def count_tokens(model: ModelCard, provider: Provider, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    """Exact counts for a loaded local model (its tokenizer over its chat template); None for
    anything else, so the core falls back to its upper bound."""
    if model.provider_type != TYPE_NAME:
        return None
    count = getattr(provider, "count", None)
    if count is None or type(provider).__module__ != "squirrel_models_huggingface.provider":
        return None
    result: TokenCount | None = count(model, request, text)
    return result
