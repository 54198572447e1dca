"""Build real (tiny) installed distributions on disk, for entry-point discovery tests.

``importlib.metadata`` finds a ``*.dist-info`` folder on ``sys.path`` exactly as it finds one
pip installed, so these exercise the real discovery path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def make_dist(root: Path, name: str, *, entry_points: dict[str, str],
              modules: dict[str, str] | None = None, group: str = "squirrel_models") -> Path:
    """Write distribution ``name`` with ``entry_points`` (name -> "module:attr") and
    ``modules`` (module name -> source) under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{eps}")
    for mod, src in (modules or {}).items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return root


def install(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.syspath_prepend(str(root))


SCRIPTED_DIST = {"scripted": "squirrel_models.testing.provider"}
