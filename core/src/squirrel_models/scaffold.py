"""``squirrel plugin new NAME [--kind KIND]``: write a ready plugin distribution.

The distribution ``squirrel-models-NAME`` (import ``squirrel_models_NAME``, entry point
``NAME``) holds a ``pyproject.toml`` with its entry point, one working implementation of its
kind named ``NAME``, a test module that proves discovery through the entry point and runs the
core's conformance suite of that kind, and a README. It installs and passes its tests as
written. The kinds (:data:`KINDS`): ``provider`` (a :class:`~squirrel_models.simple.
SimpleProvider`, the default), ``budget`` (a budget backend), ``scoring`` (a scoring rule),
``fallback`` (a fallback strategy), ``ratelimit`` (a rate-limit store) and ``tokens`` (a token
counter). The files come from the templates in
``squirrel_models/templates/plugin``: ``pyproject.toml.tmpl`` and ``py.typed.tmpl`` shared, the
others in a folder per kind.

The folder is written whole or not at all: into a temporary folder next to it, renamed into
place at the end; an existing file or folder of that name is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
from importlib import resources
from pathlib import Path

from .errors import SquirrelError, shown_path

__all__ = ["KINDS", "NAME_PATTERN", "PluginKindError", "PluginNameError", "PluginTarget", "new_plugin",
           "plugin_files"]

#: A plugin name: lower-case words of letters and digits joined by single hyphens, starting
#: with a letter (``tinychat``, ``my-api2``): the entry point and provider type as written.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME = 40
_PREFIX = "squirrel-models-"
#: kind -> what the distribution's description calls it, and what it depends on beside the core.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "provider": ("provider plugin", ("attrs>=24.2", "httpx>=0.27")),
    "budget": ("budget backend plugin", ("attrs>=24.2",)),
    "scoring": ("scoring rule plugin", ()),
    "fallback": ("fallback strategy plugin", ("attrs>=24.2",)),
    "ratelimit": ("rate-limit store plugin", ("attrs>=24.2",)),
    "tokens": ("token counter plugin", ()),
}
#: template (in the kind's folder, but the shared pyproject and py.typed) -> where it goes in the
#: distribution (``{module}``, ``{test}`` and ``{kind}`` filled in).
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "{kind}/README.md.tmpl": "README.md",
    "{kind}/__init__.py.tmpl": "src/{module}/__init__.py",
    "{kind}/{kind}.py.tmpl": "src/{module}/{kind}.py",
    "{kind}/test_plugin.py.tmpl": "tests/test_{test}.py",
    # PEP 561: without it, mypy in a project that imports the plugin stops at import-untyped
    "py.typed.tmpl": "src/{module}/py.typed",
}


class PluginNameError(SquirrelError, ValueError):
    """``NAME`` cannot name a plugin; the message says what would."""


class PluginKindError(SquirrelError, ValueError):
    """No plugin kind of that name; the message lists the kinds."""


class PluginTarget(FileExistsError):
    """The folder to write is already there (or cannot be made); nothing was written."""


def _check_name(name: str) -> None:
    if name.startswith(_PREFIX):
        raise PluginNameError(f"give the short name ({name.removeprefix(_PREFIX)!r}): the distribution is "
                              f"named {_PREFIX}NAME")
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME:
        shown = name if len(name) <= 60 and name.isprintable() else repr(name[:60])
        raise PluginNameError(
            f"{shown!r} is not a plugin name: use lower-case letters, digits and single hyphens, starting "
            f"with a letter, at most {MAX_NAME} characters (such as 'tinychat' or 'my-api')")


#: The plugins squirrel-models itself publishes (``squirrel-models-NAME``): installed or not
#: here, a second distribution of that name would replace the project's own when installed.
_PROJECT_PLUGINS = frozenset({"openai", "huggingface", "llama-local", "sqlite-budget",
                              "postgres-budget", "redis", "gateway"})


def _installed(name: str) -> str | None:
    """What already answers to plugin ``name`` here (an installed distribution of that name, or
    an entry point of that name in the plugin group), else None: a second one would clash."""
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    from .plugins import GROUP

    if name in _PROJECT_PLUGINS:
        return f"{_PREFIX}{name} is a plugin of squirrel-models itself"
    try:
        distribution(_PREFIX + name)
        return f"the distribution {_PREFIX}{name} is installed"
    except PackageNotFoundError:
        pass
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            dist = getattr(getattr(ep, "dist", None), "name", None)
            return f"the installed plugin {name!r}{f' (from {dist})' if dist else ''} has that name"
    return None


#: kind -> what :meth:`PluginManager.contributions` lists the names of that kind under.
#: A token counter offers no named thing (its name is the tag of the models it counts for).
_PROVIDED = {"provider": "providers", "budget": "budget_backends", "scoring": "scoring_rules",
             "fallback": "fallback_strategies", "ratelimit": "ratelimit_stores"}


def _provided(name: str, kind: str) -> str | None:
    """Which loaded plugin already provides a ``kind`` named ``name`` (a built-in such as the
    ``cost`` scoring rule or the ``memory`` budget backend, or an installed plugin's, such as
    the sqlite-budget plugin's ``sqlite`` backend), else None. Entry points load before the
    built-ins and the first one of a name is kept: the new plugin would silently replace it
    for every router in the environment (or, under SQUIRREL_STRICT_PLUGINS, stop them all)."""
    from .plugins import PluginManager

    key = _PROVIDED.get(kind)
    if key is None:
        return None
    pm = PluginManager(strict=False)
    for plugin, contributed in pm.contributions().items():
        if name in contributed.get(key, ()):
            where = "built-in" if plugin.startswith("builtin.") else "installed"
            return f"the {where} plugin {plugin!r} already provides the {kind} {name!r}"
    return None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        shown = kind if len(kind) <= 60 and kind.isprintable() else repr(kind[:60])
        raise PluginKindError(f"{shown!r} is not a plugin kind: use one of {', '.join(KINDS)}")


def plugin_files(name: str, kind: str = "provider") -> dict[str, str]:
    """The distribution's files for plugin ``name`` of ``kind``: relative path -> text."""
    _check_name(name)
    _check_kind(kind)
    from . import __version__

    words = name.split("-")
    what, deps = KINDS[kind]
    values = {
        "name": name,
        "dist": _PREFIX + name,
        "module": "squirrel_models_" + "_".join(words),
        "cls": "".join(w[:1].upper() + w[1:] for w in words),
        "core_version": __version__,
        "what": what,
        "dependencies": ", ".join(f'"{d}"' for d in (f"squirrel-models>={__version__}", *deps)),
    }
    folder = resources.files("squirrel_models") / "templates" / "plugin"
    out: dict[str, str] = {}
    for template, target in _FILES.items():
        text = (folder / template.format(kind=kind)).read_text(encoding="utf-8")
        out[target.format(module=values["module"], test="_".join(words), kind=kind)] = \
            string.Template(text).substitute(values)
    return out


def new_plugin(name: str, parent: str | os.PathLike[str] = ".", kind: str = "provider") -> Path:
    """Write the distribution of plugin ``name``, of ``kind`` (:data:`KINDS`), into
    ``parent/squirrel-models-NAME`` and return that folder. :class:`PluginNameError` for a bad
    name (or one an installed plugin or distribution already answers to),
    :class:`PluginKindError` for an unknown kind, :class:`PluginTarget` when the folder exists
    or ``parent`` is not a folder; either way nothing is written."""
    files = plugin_files(name, kind)
    clash = _installed(name) or _provided(name, kind)
    if clash is not None:
        raise PluginNameError(f"{name!r} is taken: {clash}; its entry point and {kind} name would clash "
                              "(choose another name)")
    base = Path(parent)
    # Looked up once each, any error said in one line: a path too long for the system raised
    # OSError from is_dir() (a NUL from the API, ValueError): an 'internal error' quoting it whole.
    try:
        if not base.is_dir():
            raise PluginTarget(f"{shown_path(base)} is not a folder")
        target = base / (_PREFIX + name)
        if target.exists() or target.is_symlink():
            raise PluginTarget(f"{shown_path(target)} already exists: not overwritten (choose another "
                               "name or folder)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    except PluginTarget:
        raise
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PluginTarget(f"cannot write in {shown_path(base)}: {why}") from None
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        tmp.chmod(0o777 & ~_umask())
        if target.exists() or target.is_symlink():  # made meanwhile: still never overwritten
            raise PluginTarget(f"{shown_path(target)} already exists: not overwritten")
        tmp.rename(target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, PluginTarget):
            raise PluginTarget(f"cannot write {shown_path(target)}: {exc.strerror or exc}") from exc
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
