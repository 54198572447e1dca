"""Fixtures of the reliability suite: the faulty server, canary keys, the sqlite budget file
and the figures every test adds to (written to ``bench-results/reliability.json``, or the
path in ``SQUIRREL_RELIABILITY_JSON``, at the end of the run)."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import secret_scanner
from ..support.canary import canary_env_fixture
from ..support.faulty_server import faulty_fixtures
from ..support.httpx_generators import ignore_unclosed_httpx_generators

ROOT = Path(__file__).resolve().parents[2]
#: The API key every provider of the suite is configured with; it must never show anywhere.
CANARY = secret_scanner.canary("sk-rel-5e1d9c7b3a2f4086Kq")
CANARY_ENV = "SQUIRREL_RELIABILITY_CANARY"
#: Every figure the suite measured, by section; written to JSON when the session ends.
FIGURES: dict[str, dict[str, Any]] = {}
_STARTED = time.monotonic()


def figure(section: str, **values: Any) -> None:
    """Add ``values`` to a section of the figures; numbers add up across tests."""
    sec = FIGURES.setdefault(section, {})
    for k, v in values.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and isinstance(sec.get(k), int | float):
            sec[k] = max(sec[k], v) if k.startswith("max_") else sec[k] + v
        else:
            sec[k] = v


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not FIGURES:
        return
    out = Path(os.environ.get("SQUIRREL_RELIABILITY_JSON", ROOT / "bench-results" / "reliability.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"suite": "tests/reliability", "exit_status": int(exitstatus),
            "duration_s": round(time.monotonic() - _STARTED, 1),
            "python": platform.python_version(), "machine": f"{os.cpu_count()} cores",
            "figures": FIGURES}
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


faulty_session, faulty = faulty_fixtures(models=("ok",))
canary_env = canary_env_fixture(CANARY_ENV, CANARY)


class Everything(logging.Handler):
    """A root handler that keeps every record at every level, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(record.args) + repr(record.__dict__.get("exc_text")))


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Everything]:
    """caplog at DEBUG everywhere plus a root handler that formats every record."""
    caplog.set_level(logging.DEBUG)
    handler = Everything()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ignore_unclosed_httpx_generators(items, __file__)
