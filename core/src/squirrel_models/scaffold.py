"""``squirrel plugin new NAME``: write a ready provider plugin distribution.

The distribution ``squirrel-models-NAME`` (import ``squirrel_models_NAME``, entry point and
provider type ``NAME``) holds a ``pyproject.toml`` with its entry point, the provider (a
:class:`~squirrel_models.simple.SimpleProvider`), a test module running the core's conformance
kit, and a README. It installs and passes its tests as written. The files come from the
templates in ``squirrel_models/templates/plugin``.

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

__all__ = ["NAME_PATTERN", "PluginNameError", "PluginTarget", "new_plugin", "plugin_files"]

#: A plugin name: lower-case words of letters and digits joined by single hyphens, starting
#: with a letter (``tinychat``, ``my-api2``): the entry point and provider type as written.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME = 40
_PREFIX = "squirrel-models-"
#: template -> where it goes in the distribution (``{module}`` and ``{test}`` filled in).
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "src/{module}/__init__.py",
    "provider.py.tmpl": "src/{module}/provider.py",
    "test_plugin.py.tmpl": "tests/test_{test}.py",
}


class PluginNameError(ValueError):
    """``NAME`` cannot name a plugin; the message says what would."""


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


def _installed(name: str) -> str | None:
    """What already answers to plugin ``name`` here (an installed distribution of that name, or
    an entry point of that name in the plugin group), else None: a second one would clash."""
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    from .plugins import GROUP

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


def plugin_files(name: str) -> dict[str, str]:
    """The distribution's files for plugin ``name``: relative path -> text."""
    _check_name(name)
    from . import __version__

    words = name.split("-")
    values = {
        "name": name,
        "dist": _PREFIX + name,
        "module": "squirrel_models_" + "_".join(words),
        "cls": "".join(w[:1].upper() + w[1:] for w in words),
        "core_version": __version__,
    }
    folder = resources.files("squirrel_models") / "templates" / "plugin"
    out: dict[str, str] = {}
    for template, target in _FILES.items():
        text = string.Template((folder / template).read_text(encoding="utf-8")).substitute(values)
        out[target.format(module=values["module"], test="_".join(words))] = text
    return out


def new_plugin(name: str, parent: str | os.PathLike[str] = ".") -> Path:
    """Write the distribution of plugin ``name`` into ``parent/squirrel-models-NAME`` and return
    that folder. :class:`PluginNameError` for a bad name (or one an installed plugin or
    distribution already answers to), :class:`PluginTarget` when the folder
    exists or ``parent`` is not a folder; either way nothing is written."""
    files = plugin_files(name)
    clash = _installed(name)
    if clash is not None:
        raise PluginNameError(f"{name!r} is taken: {clash}; its entry point and provider type would clash "
                              "(choose another name)")
    base = Path(parent)
    if not base.is_dir():
        raise PluginTarget(f"{base} is not a folder")
    target = base / (_PREFIX + name)
    if target.exists() or target.is_symlink():
        raise PluginTarget(f"{target} already exists: not overwritten (choose another name or folder)")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    except OSError as exc:
        raise PluginTarget(f"cannot write in {base}: {exc.strerror or exc}") from exc
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        tmp.chmod(0o777 & ~_umask())
        if target.exists() or target.is_symlink():  # made meanwhile: still never overwritten
            raise PluginTarget(f"{target} already exists: not overwritten")
        tmp.rename(target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, PluginTarget):
            raise PluginTarget(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
