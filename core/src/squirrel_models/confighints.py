"""What an unknown configuration key was probably meant to be (internal; used by
:mod:`squirrel_models.config` for every ``unknown key`` it reports).

A bare ``unknown key`` left a new user guessing at four common mistakes, at every level of
the file and in every plugin's options: a misspelling (``timeuot``), a key at the wrong level
(``max_attempts`` at the top instead of under ``[fallback]``), TOML's own trap (a top-level
key such as ``timeout`` written below a ``[budget]`` header belongs to ``[budget]``), and a
provider's or backend's setting written beside its ``options`` table instead of in it
(``base_url`` under ``[[providers]]``). Each gets one short hint; the key's value is never
quoted (it may be the API key pasted where ``api_key_env`` belongs).
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["unknown_key_hint"]

#: Keys people give an API key under; the key itself never belongs in a configuration.
_KEY_ITSELF = frozenset({"api_key", "apikey", "api-key", "key", "token", "secret", "password",
                         "openai_api_key", "hf_token", "access_token", "bearer"})


def _fields(cls: type) -> list[str]:
    return [a.name for a in attrs.fields(cls) if a.init]


def _nested(t: Any) -> list[tuple[str, type]]:
    """The attrs classes a field of type ``t`` holds, with the suffix their path adds
    (``[]`` for an array of tables)."""
    if attrs.has(t):
        return [("", t)]
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and attrs.has(args[0]):
        return [("[]", args[0])]
    return [("", a) for a in args if isinstance(a, type) and attrs.has(a)]


@functools.cache
def _where() -> Mapping[str, tuple[str, ...]]:
    """Every key the core's configuration takes, and the tables that take it (``""`` for
    the top level, ``providers[].models[].price``...)."""
    from .config import Config

    found: dict[str, list[str]] = {}

    def walk(cls: type, path: str) -> None:
        hints = typing.get_type_hints(cls)
        for a in attrs.fields(cls):
            if not a.init:
                continue
            found.setdefault(a.name, []).append(path)
            for suffix, inner in _nested(hints.get(a.name)):
                walk(inner, f"{path}.{a.name}{suffix}".lstrip("."))

    walk(Config, "")
    return {k: tuple(v) for k, v in found.items()}


def _table(path: str) -> str:
    """``providers[].models[]`` as TOML writes its header: ``[[providers.models]]``."""
    if not path:
        return "the top level"
    name = path.replace("[]", "")
    return f"[[{name}]]" if path.endswith("[]") else f"[{name}]"


#: Tables whose ``options`` table holds a plugin's own settings.
_OPTIONS_HOLDERS = {"ProviderConfig": "provider type", "BudgetConfig": "budget backend",
                    "RateLimitConfig": "rate-limit store"}


def unknown_key_hint(key: object, cls: type | None, path: str) -> str:
    """``unknown key`` and what ``key`` was probably meant to be, for the table of attrs
    class ``cls`` at dotted ``path`` (``providers[0]``, ``budget.options``; ``""`` for the
    top level)."""
    if not isinstance(key, str) or len(key) > 100 or cls is None or not attrs.has(cls):
        return "unknown key"  # no field name is that long: nothing to compare it with
    names = _fields(cls)
    if key.lower() in _KEY_ITSELF:
        # the table's own option naming a variable (api_key_env, Hugging Face's token_env,
        # Redis's url_env), else the provider's options
        where = next((n for n in names if n.endswith("_env")), None) or (
            "options.api_key_env" if cls.__name__ == "ProviderConfig"
            else "an option naming an environment variable")
        return (f"unknown key: a key never goes in the configuration; put it in an environment "
                f"variable and name that in {where} (the value is not shown)")
    import difflib  # here, not at import: only a configuration with a mistake needs it

    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    section = re.sub(r"\[\d+\]", "[]", path)
    elsewhere = [w for w in _where().get(key, ()) if w != section]
    if "" in elsewhere and path:
        return (f"unknown key here; {key} is a top-level key: write it above the first [table] "
                f"header (in TOML a key below {_table(section)} belongs to it)")
    if elsewhere:
        return f"unknown key here; {key} belongs in " + " or ".join(_table(w) for w in elsewhere[:3])
    if (what := _OPTIONS_HOLDERS.get(cls.__name__)) is not None:
        return (f"unknown key; a {what}'s own settings go in its options table "
                f"(options.{key} = ...)")
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    listed = ", ".join(names)
    if len(listed) > 100:  # the message stays one readable line; the reference lists them all
        listed = listed[:listed.rfind(", ", 0, 100)] + ", ... (docs/configuration.md)"
    return f"unknown key; {_table(section)} takes: {listed}"
