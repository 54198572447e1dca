"""The plugin module behind the ``llama-local`` entry point: the provider type and exact
token counts from each local model's own tokenizer.

Registering needs the options only (a configuration error names its field at start-up); the
provider, with its runtime, the GGUF reader and anyio's thread portal, is imported when a
provider of this type is created.
"""

from __future__ import annotations

import sys

from squirrel_models.hookspecs import hookimpl
from squirrel_models.providers import Provider, ProviderSpec, ProviderType
from squirrel_models.types import AIRequest, ModelCard, TokenCount

from .options import PROVIDER_TYPE, LlamaLocalOptions

__all__ = ["count_tokens", "register_providers"]

_PROVIDER_MODULE = "squirrel_models_llama_local.provider"


def _factory(spec: ProviderSpec) -> Provider:
    from .provider import factory

    return factory(spec)


@hookimpl
def register_providers() -> list[ProviderType]:
    return [ProviderType(
        PROVIDER_TYPE, _factory, options_type=LlamaLocalOptions,
        description="GGUF models in this process through llama-cpp-python (no server, no key, price 0)")]


@hookimpl
def count_tokens(model: ModelCard, provider: Provider, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    # No provider of this plugin exists until its module is imported: asking for the module
    # here would import it (and its runtime) for every count of every other provider's models.
    module = sys.modules.get(_PROVIDER_MODULE)
    if module is not None and isinstance(provider, module.LlamaLocalProvider):
        result: TokenCount | None = provider.count_tokens(model, request, text)
        return result
    return None
