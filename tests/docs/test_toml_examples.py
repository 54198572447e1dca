"""Every TOML example a user may copy (README.md, docs/*.md, each distribution's README) is
TOML that Python's own reader takes, and each that is a whole ``squirrel.toml`` loads as a
configuration: a newcomer pastes them as they are.

TOML 1.0 (``tomllib``) refuses a line break inside an inline table (``{ ... }``), a mistake
that reads naturally in a long ``models = [{ ... }]`` line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import pytest
from squirrel_models.config import Config, load_toml

ROOT = Path(__file__).parents[2]
PAGES = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md"),
                *ROOT.glob("plugins/*/README.md"), *ROOT.glob("docs/*/README.md")})
BLOCK = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
CONFIG_KEYS = {f.name for f in attrs.fields(Config)}


def examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", m.group(1)))
    return found


EXAMPLES = examples()


def test_the_pages_have_toml_examples() -> None:
    pages = {where.split(":")[0] for where, _ in EXAMPLES}
    assert {"docs/quickstart.md", "plugins/openai/README.md",
            "plugins/huggingface/README.md"} <= pages


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_is_toml_and_a_whole_configuration_loads(where: str, code: str,
                                                         tmp_path: Path) -> None:
    try:
        data = tomllib.loads(code)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{where}: not TOML a user can paste: {exc}")
    # A fragment (one [[providers.models]] entry, a limits = [...] line, a pyproject.toml)
    # is not a whole configuration; a document of top-level configuration tables is.
    if not data.keys() <= CONFIG_KEYS or not isinstance(data.get("providers", []), list):
        return
    (tmp_path / "squirrel.toml").write_text(code, encoding="utf-8")
    load_toml(tmp_path / "squirrel.toml")
