"""squirrel-models-openai: a provider for any OpenAI-compatible chat completions API.

Configure it with ``type = "openai"`` (see :class:`OpenAIOptions`); the plugin is found
through its ``squirrel_models`` entry point. The HTTP clients (httpx, aiohttp) are imported
when a provider is created, not when the plugin is loaded: a router that has the plugin
installed but no ``openai`` provider configured pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

__all__ = ["OpenAIOptions", "OpenAIProvider", "parse_usage"]
__version__ = "0.1.0"

_EXPORTS = {"OpenAIOptions": "options", "OpenAIProvider": "provider", "parse_usage": "provider"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .options import OpenAIOptions
    from .provider import OpenAIProvider, parse_usage
