"""The ``squirrel`` command's entry point (``[project.scripts]``), kept to the standard
library so it is loaded in moments: Ctrl-C while the command itself is still being imported
(click, the core: about 0.2 s) ends as it does later, one line and exit code 130, where it
printed a ``KeyboardInterrupt`` traceback. :mod:`squirrel_models.cli` is the command."""

from __future__ import annotations

import sys

__all__ = ["main"]

#: Ctrl-C (SIGINT), as shells report a command it stopped (``cliframe.EXIT_INTERRUPTED``).
EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from .cli import main as command
    except KeyboardInterrupt:
        sys.stderr.write("\nError: Interrupted: stopped by Ctrl-C\n")
        sys.exit(EXIT_INTERRUPTED)
    command()
