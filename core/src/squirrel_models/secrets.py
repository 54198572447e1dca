"""Secrets (API keys, tokens, passwords) that never show in reprs, logs or errors.

A :class:`Secret` hides its value from ``repr``/``str``/formatting; the value is read only with
:meth:`Secret.reveal`, at the one place it is sent (an HTTP header). Every secret created is
also remembered (weakly, by value) so that :func:`redact` can scrub it from any text that
reaches a log record or an exception raised across a plugin boundary.
"""

from __future__ import annotations

import logging
import os
import re
import threading

import attrs

from .errors import ConfigError

__all__ = ["RedactingFilter", "Secret", "redact"]

_known: set[str] = set()
_known_lock = threading.Lock()
MASK = "***"
#: What an environment variable's name looks like by convention; anything else is not echoed.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


@attrs.frozen(repr=False)
class Secret:
    """A secret string. ``repr``, ``str`` and f-strings show ``***``."""

    _value: str = attrs.field(alias="value")

    def __attrs_post_init__(self) -> None:
        if len(self._value) >= 4:  # shorter values would mask ordinary words
            with _known_lock:
                _known.add(self._value)

    @classmethod
    def from_env(cls, name: str, *, field: str) -> Secret:
        """Read the variable ``name``; a missing or empty one is a :class:`ConfigError` on ``field``."""
        value = os.environ.get(name)
        if not value:
            if not _ENV_NAME.fullmatch(name):
                # Not a variable's name: most likely the key itself, pasted here. Never echo it.
                raise ConfigError("must be the name of an environment variable (such as "
                                  "OPENAI_API_KEY) holding the key, not the key itself; the value "
                                  "given is not shown", field=field)
            raise ConfigError(f"environment variable {name} is not set", field=field)
        return cls(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    if not _known:
        return text
    with _known_lock:
        secrets = sorted(_known, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs known secrets from a record's message and arguments.

    Installed on the ``squirrel_models`` logger; add it to your own handlers to cover
    third-party libraries' records too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _known:
            message = record.getMessage()
            clean = redact(message)
            if clean != message or record.exc_info:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                # Formatters reuse exc_text when set, so the traceback is scrubbed once here.
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
