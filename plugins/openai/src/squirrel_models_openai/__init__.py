"""squirrel-models-openai: a provider for any OpenAI-compatible chat completions API.

Configure it with ``type = "openai"`` (see :class:`OpenAIOptions`); the plugin is found
through its ``squirrel_models`` entry point.
"""

from __future__ import annotations

from .options import OpenAIOptions
from .provider import OpenAIProvider, parse_usage

__all__ = ["OpenAIOptions", "OpenAIProvider", "parse_usage"]
__version__ = "0.1.0"
