"""The budget invariant over interleaved reservations, partial streams, cancellations and
crashes (lease expiry, then reconcile), on a real Redis server started by the tests: see
:mod:`tests.support.budget_machine`."""

from __future__ import annotations

import uuid

import pytest
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions

from tests.support.budget_machine import run_budget_machine

from .redisserver import RedisServer


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_budget_invariant_holds_over_interleavings(redis_server: RedisServer, anyio_backend: str) -> None:
    prefix = f"m{uuid.uuid4().hex[:12]}"
    run_budget_machine(
        lambda clock: RedisBudgetBackend(RedisOptions(key_prefix=prefix), clock=clock,
                                         url=Secret(redis_server.url, opaque=False)),
        anyio_backend=anyio_backend)
