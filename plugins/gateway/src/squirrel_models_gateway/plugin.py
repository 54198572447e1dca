"""The plugin: ``squirrel serve`` and ``squirrel hash-key``, through the ``register_commands``
hook (the one entry point of squirrel-models-gateway).

The commands live in :mod:`.commands`, imported when the command line starts: a router that
only has this plugin installed (``ModelManager()`` loads every entry point) pays nothing for
click, and nothing for the server, starlette or uvicorn, which load when ``serve`` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.hookspecs import hookimpl

if TYPE_CHECKING:
    import click

__all__ = ["register_commands"]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .commands import hash_key, serve

    cli.add_command(serve)
    cli.add_command(hash_key)
