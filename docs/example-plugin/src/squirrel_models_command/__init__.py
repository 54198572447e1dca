"""squirrel-models-command: run a local command-line program as a model.

The plugin offers one provider type, ``command``. Each ``[[providers]]`` entry of that type
runs a program per attempt (a llama.cpp CLI, a shell script, anything that reads a prompt and
writes an answer), with the prompt on its standard input or in its arguments and the answer
read from its standard output as it arrives.
"""

from __future__ import annotations

from squirrel_models import ProviderType, hookimpl

from .options import CommandOptions
from .provider import TYPE_NAME, CommandProvider, render_prompt

__all__ = ["TYPE_NAME", "CommandOptions", "CommandProvider", "register_providers", "render_prompt"]
__version__ = "0.1.0"


@hookimpl
def register_providers() -> list[ProviderType]:
    """The ``command`` provider type: configuration's ``options`` become :class:`CommandOptions`."""
    return [ProviderType(TYPE_NAME, CommandProvider.from_spec, CommandOptions,
                         "a local command-line program as a model (prompt on stdin or as an "
                         "argument, answer on stdout)")]
