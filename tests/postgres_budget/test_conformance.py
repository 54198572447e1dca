"""The core's budget-backend conformance suite, on both drivers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from squirrel_models.testing.conformance import BudgetBackendConformance
from squirrel_models_postgres_budget import PostgresBudgetBackend

pytestmark = pytest.mark.anyio


class TestPostgresBudgetConformance(BudgetBackendConformance):
    @pytest.fixture(params=["auto", "threads"])
    def backend(self, request: pytest.FixtureRequest,
                make_backend: Callable[..., PostgresBudgetBackend]) -> PostgresBudgetBackend:
        return make_backend(driver=request.param)

    @pytest.fixture
    def sliced(self, make_backend: Callable[..., PostgresBudgetBackend]
               ) -> Callable[..., PostgresBudgetBackend]:
        return make_backend
