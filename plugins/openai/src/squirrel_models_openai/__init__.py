"""squirrel-models-openai: a provider for any OpenAI-compatible chat completions API.

Configure it with ``type = "openai"`` (see :class:`OpenAIOptions`); the plugin is found
through its ``squirrel_models`` entry point. The HTTP clients (httpx, aiohttp) are imported
when a provider is created, not when the plugin is loaded: a router that has the plugin
installed but no ``openai`` provider configured pays nothing for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["OpenAIOptions", "OpenAIProvider", "parse_usage"]
__version__ = "0.1.0"

_EXPORTS = {"OpenAIOptions": ".options", "OpenAIProvider": ".provider", "parse_usage": ".provider"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .options import OpenAIOptions
    from .provider import OpenAIProvider, parse_usage
