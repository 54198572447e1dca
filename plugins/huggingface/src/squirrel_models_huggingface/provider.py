"""``HuggingFaceProvider``: one configured ``huggingface`` provider, remote or local.

The options choose the backend (:class:`~.options.HuggingFaceOptions`): a server at
``base_url`` or Inference Providers (:mod:`.remote`, through ``huggingface_hub``), or a local
transformers model folder (:mod:`.local`). Both make exactly one attempt per call and raise
only :class:`~squirrel_models.errors.ModelError` subclasses for upstream failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from squirrel_models.errors import ConfigError
from squirrel_models.providers import ModelOverride, ProviderSpec
from squirrel_models.proxies import check_ca_environment, register_environment_proxies
from squirrel_models.secrets import Secret
from squirrel_models.types import AIRequest, ModelCard, ProviderResponse, StreamChunk, TokenCount

from ._cards import remote_cards
from .options import HuggingFaceOptions

if TYPE_CHECKING:
    from .local import LocalBackend
    from .remote import RemoteBackend

__all__ = ["HuggingFaceProvider"]


class HuggingFaceProvider:
    """A Hugging Face provider instance. ``models`` are the ``[[providers.models]]`` entries:
    the models of a server or of Inference Providers (by Hub id), overrides for a local one.
    ``token_field`` names the configuration field in a missing-token error; ``field_prefix``
    goes before the option names in other configuration errors."""

    def __init__(self, name: str, options: HuggingFaceOptions | None = None, *,
                 models: Sequence[ModelOverride] = (), token_field: str = "token_env",
                 field_prefix: str = "") -> None:
        self.name = name
        self.options = opts = options if options is not None else HuggingFaceOptions()
        self._overrides = tuple(models)
        # huggingface_hub's httpx client reads the proxy variables itself and may quote the URL.
        register_environment_proxies()
        self.local: LocalBackend | None = None
        self.remote: RemoteBackend | None = None
        if opts.mode == "local":
            from .local import LocalBackend

            self.local = LocalBackend(name, opts, self._overrides, field=f"{field_prefix}model_path")
        else:
            if not self._overrides and opts.model is None:
                raise ConfigError("name at least one model: the model option or [[providers.models]] entries",
                                  field=f"{field_prefix}model")
            check_ca_environment()  # read by huggingface_hub's client too, at its first request
            token = Secret.from_env(opts.token_env, field=token_field) if opts.token_env else None
            from .remote import RemoteBackend

            self.remote = RemoteBackend(name, opts, token, token_field)

    @classmethod
    def from_spec(cls, spec: ProviderSpec) -> HuggingFaceProvider:
        """The factory the core calls for each ``[[providers]]`` entry of type ``huggingface``."""
        options = (spec.options if isinstance(spec.options, HuggingFaceOptions)
                   else HuggingFaceOptions(**(spec.options or {})))
        where = spec.path or f"providers.{spec.name}"
        return cls(spec.name, options, models=spec.models, token_field=f"{where}.options.token_env",
                   field_prefix="options.")

    def __repr__(self) -> str:
        backend = self.local if self.local is not None else self.remote
        return f"HuggingFaceProvider(name={self.name!r}, mode={self.options.mode!r}, backend={backend!r})"

    async def list_models(self) -> Sequence[ModelCard]:
        if self.local is not None:
            return [await self.local.load()]
        return remote_cards(self.name, self._overrides, self.options.model)

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        if self.local is not None:
            return await self.local.complete(model, request)
        assert self.remote is not None
        return await self.remote.complete(model, request)

    def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        if self.local is not None:
            return self.local.stream(model, request)
        assert self.remote is not None
        return self.remote.stream(model, request)

    def count(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        """Exact counts for the local model (its tokenizer and chat template), once loaded;
        None otherwise (remote tokenizers are unknown here: the core's upper bound applies)."""
        if self.local is None or model.model != self.local.model_name or not self.local.loaded:
            return None
        if request is not None:
            return self.local.count_prompt(request)
        return self.local.count_text(text or "")

    async def aclose(self) -> None:
        if self.local is not None:
            await self.local.aclose()
        if self.remote is not None:
            await self.remote.aclose()
