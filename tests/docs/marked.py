"""Code blocks of a docs page marked to be run: ``<!-- test: VERB [NAME] -->`` on the line
before the block's opening fence (``run``, ``budget``, ``file conftest.py``...)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
MARKED = re.compile(r"<!-- test: (?P<what>[a-z]+)(?: (?P<name>\S+))? -->\s*\n"
                    r"```(?P<lang>\w+)\n(?P<code>.*?)```", re.DOTALL)


def marked_blocks(page: str) -> list[re.Match[str]]:
    """The marked blocks of ``page`` (a path from the repository's root), in page order."""
    return list(MARKED.finditer((ROOT / page).read_text(encoding="utf-8")))
