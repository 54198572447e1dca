"""Fixtures for the SQLite budget backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions

from tests.support.factories import closing_factory


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "budget.sqlite3")


@pytest.fixture
async def make_backend(db_path: str) -> AsyncIterator[Callable[..., SqliteBudgetBackend]]:
    """A factory of backends on ``db_path`` (``**options`` override), closed afterwards."""

    def build(clock: Callable[[], float] | None = None, **options: Any) -> SqliteBudgetBackend:
        options.setdefault("path", db_path)
        b = SqliteBudgetBackend(SqliteBudgetOptions(**options))
        if clock is not None:
            b.clock = clock
        return b

    async with closing_factory(build) as make:
        yield make
