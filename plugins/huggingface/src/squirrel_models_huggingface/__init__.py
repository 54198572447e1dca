"""squirrel-models-huggingface: Hugging Face Inference (Providers, Endpoints, self-hosted TGI)
and local transformers models.

Configure it with ``type = "huggingface"`` (see :class:`HuggingFaceOptions`); the plugin is
found through its ``squirrel_models`` entry point. Importing this package is cheap:
huggingface_hub, transformers and torch load only when a provider needs them, and the
provider's module (with ssl and urllib's proxy handling) on first use of its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

_EXPORTS = {
    "HuggingFaceOptions": "options",
    "HuggingFaceProvider": "provider",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .options import HuggingFaceOptions
    from .provider import HuggingFaceProvider

__all__ = ["HuggingFaceOptions", "HuggingFaceProvider"]
__version__ = "0.1.0"
