"""The core's budget-backend conformance suite, on both connection modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from squirrel_models.testing.conformance import BudgetBackendConformance
from squirrel_models_sqlite_budget import SqliteBudgetBackend

pytestmark = pytest.mark.anyio


class TestSqliteBudgetConformance(BudgetBackendConformance):
    @pytest.fixture(params=["shared", "per_thread"])
    def backend(self, request: pytest.FixtureRequest,
                make_backend: Callable[..., SqliteBudgetBackend]) -> SqliteBudgetBackend:
        return make_backend(connections=request.param)

    @pytest.fixture
    def sliced(self, make_backend: Callable[..., SqliteBudgetBackend]
               ) -> Callable[..., SqliteBudgetBackend]:
        return make_backend
