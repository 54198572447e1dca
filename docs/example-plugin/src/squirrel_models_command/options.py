"""The ``options`` table of a ``type = "command"`` provider.

The core structures the table into :class:`CommandOptions` with its own converter, so an
unknown key or a wrong type is a :class:`~squirrel_models.ConfigError` that names the field
(``providers[0].options.timeout``) before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from squirrel_models import ConfigError

__all__ = ["PLACEHOLDERS", "CommandOptions"]

#: Replaced in every argument of a command (plain text replacement, so other braces are safe).
PLACEHOLDERS = ("{prompt}", "{model}", "{max_tokens}")


def _argv(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value or not value[0]:
        raise ConfigError("must name a program, e.g. [\"llama-cli\", \"-m\", \"model.gguf\"]",
                          field=attribute.name)


def _commands(instance: Any, attribute: attrs.Attribute[Any],
              value: Mapping[str, tuple[str, ...]]) -> None:
    for model, argv in value.items():
        if not argv or not argv[0]:
            raise ConfigError("must name a program", field=f"commands.{model}")


def _timeout(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=attribute.name)


def _masked(env: Mapping[str, str]) -> str:
    # Environment values are often API keys: a repr shows the names only.
    return "{" + ", ".join(f"{k!r}: '***'" for k in env) + "}"


@attrs.frozen
class CommandOptions:
    """How to run the program.

    ``command`` is the argument vector (no shell). ``prompt_via`` ``"stdin"`` writes the
    prompt to the program's standard input; ``"argument"`` puts it in the arguments (where a
    ``{prompt}`` placeholder is, else as the last argument). ``prompt_format`` renders the
    messages: ``plain`` (contents separated by blank lines), ``transcript`` (``role: content``
    lines) or ``json`` (the messages as a JSON list of ``{"role", "content"}`` objects).
    ``commands`` gives a model its own argument vector. ``timeout`` bounds each run in
    seconds. With ``enforce_max_tokens`` the answer is cut at the attempt's output budget
    (see the README for why this is counted in bytes).
    """

    command: tuple[str, ...] = attrs.field(validator=_argv)
    prompt_via: Literal["stdin", "argument"] = "stdin"
    prompt_format: Literal["plain", "transcript", "json"] = "plain"
    commands: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, validator=_commands)
    env: Mapping[str, str] = attrs.field(factory=dict, repr=_masked)
    cwd: str | None = None
    timeout: float = attrs.field(default=120.0, validator=_timeout)
    enforce_max_tokens: bool = True

    def __attrs_post_init__(self) -> None:
        if self.prompt_via == "stdin":
            for model, argv in {"": self.command, **self.commands}.items():
                if any("{prompt}" in arg for arg in argv):
                    raise ConfigError('has a {prompt} placeholder, so set prompt_via = "argument"',
                                      field=f"commands.{model}" if model else "command")
