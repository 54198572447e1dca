"""The core's budget-backend conformance suite, on both drivers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from squirrel_models.testing.conformance import BudgetBackendConformance
from squirrel_models_redis import RedisBudgetBackend

pytestmark = pytest.mark.anyio


class TestRedisBudgetConformance(BudgetBackendConformance):
    @pytest.fixture(params=["auto", "threads"])
    def backend(self, request: pytest.FixtureRequest,
                make_backend: Callable[..., RedisBudgetBackend]) -> RedisBudgetBackend:
        return make_backend(driver=request.param)

    @pytest.fixture
    def sliced(self, make_backend: Callable[..., RedisBudgetBackend]
               ) -> Callable[..., RedisBudgetBackend]:
        return make_backend
