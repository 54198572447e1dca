"""squirrel-models-huggingface: Hugging Face Inference (Providers, Endpoints, self-hosted TGI)
and local transformers models.

Configure it with ``type = "huggingface"`` (see :class:`HuggingFaceOptions`); the plugin is
found through its ``squirrel_models`` entry point. Importing this package is cheap:
huggingface_hub, transformers and torch load only when a provider needs them.
"""

from __future__ import annotations

from .options import HuggingFaceOptions
from .provider import HuggingFaceProvider

__all__ = ["HuggingFaceOptions", "HuggingFaceProvider"]
__version__ = "0.1.0"
