"""The gateway's commands, ``squirrel serve`` and ``squirrel hash-key``, which
:mod:`.plugin` adds to the ``squirrel`` command line when it starts."""

from __future__ import annotations

import sys
from typing import Any

import click
from squirrel_models.cliframe import WholeNumber, verbose_option

__all__ = ["hash_key", "serve"]


@click.command()
@click.option("--config", "config", default=None, metavar="FILE",
              help="TOML configuration file (default: $SQUIRREL_CONFIG, ./squirrel.toml, else the "
                   "embedded default); its [gateway] table configures the gateway.")
@click.option("--host", default=None, help="Address to listen on (default: [gateway] host, 127.0.0.1).")
@click.option("--port", type=WholeNumber(0), default=None, help="Port to listen on (default: [gateway] port, 8080).")
# the core's -v (as `squirrel -v serve`): its own count set the root logger's level only,
# below the level the core's log handler shows, so `squirrel serve -v` logged nothing more
@verbose_option
def serve(config: str | None, host: str | None, port: int | None) -> None:
    """Serve OpenAI's chat-completions API over the configured models, with virtual keys.

    Stops on Ctrl-C or SIGTERM after the requests in flight have finished or been settled.
    See docs/gateway.md.
    """
    from squirrel_models.config import load_toml
    from squirrel_models.defaults import default_config, find_config, noting_the_default
    from squirrel_models.plugins import PluginManager

    from .server import serve as run

    pm = PluginManager()
    path = find_config(config)
    cfg: Any = load_toml(path) if path else default_config(pm)
    with noting_the_default(path):  # the default has no [gateway]: say no file was found
        run(cfg, plugins=pm, host=host, port=port,
            announce=lambda url: click.echo(f"squirrel serve: {url} (Ctrl-C stops)", err=True))


@click.command("hash-key")
def hash_key() -> None:
    """Read a virtual key on standard input; print the SHA-256 that [[gateway.keys]] takes.

    The key itself is never printed: `printf %s "$KEY" | squirrel hash-key`.
    """
    from .config import hash_key as digest

    token = sys.stdin.readline().rstrip("\r\n")
    if not token or token != token.strip():
        raise click.UsageError("give the key on standard input, without surrounding whitespace")
    click.echo(digest(token))
