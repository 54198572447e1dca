"""Leased slices on Redis (issue 16): the core's slice state machine against a real server,
options, and what a killed process's slices become."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions
from squirrel_models_redis.budget import _field, _row
from squirrel_models_redis.scripts import budget_keys

from tests.support.budget_machine import Clock
from tests.support.slice_machine import FLUSH_S, LEASE_S, StoreView, run_slice_machine

from .redisserver import RedisServer


class RedisView(StoreView):
    """Reads the keys of ``prefix`` with a client of its own."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        (self.committed, self.reserved, self.open, _, self.data, self.ledger,
         *_) = budget_keys(prefix)

    async def totals(self, scope: str) -> tuple[int, int]:
        f = _field(scope, "total")
        return (int(self.client.hget(self.committed, f) or 0),
                int(self.client.hget(self.reserved, f) or 0))

    async def ledger_sum(self, scope: str) -> int:
        rows = [_row(m) for m in self.client.zrange(self.ledger, 0, -1)]
        return sum(int(r.cost * 10**9) for r in rows if r.scopes == (scope,) and r.cost)

    async def lease(self, lease_id: str) -> int | None:
        raw = self.client.hget(self.data, lease_id)
        if raw is None:
            return None
        lease = json.loads(raw)
        if self.client.zscore(self.open, lease_id) is not None:
            return int(lease["a"])
        return int(lease.get("cc", 0))

    async def open_leases(self, scope: str) -> int:
        f = _field(scope, "total")
        ids = self.client.zrange(self.open, 0, -1)
        return sum(1 for i in ids if json.loads(self.client.hget(self.data, i) or "{}")
                   .get("f") == [f])

    async def crash(self, backend: Any) -> None:
        sl = backend._slices
        sl._closed = True
        if sl._keeper_scope is not None:
            sl._keeper_scope.cancel()
        await backend._client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_slices_hold_the_invariant_over_interleavings(redis_server: RedisServer, prefix: str,
                                                      anyio_backend: str) -> None:
    def make(clock: Clock) -> RedisBudgetBackend:
        return RedisBudgetBackend(RedisOptions(
            key_prefix=prefix, slices=True, slice_flush_s=FLUSH_S, slice_lease_s=LEASE_S,
            slice_requests=4), clock=clock, url=Secret(redis_server.url, opaque=False))

    run_slice_machine(make, lambda: RedisView(redis_server.url, prefix),
                      anyio_backend=anyio_backend)


@pytest.mark.parametrize(("field", "value"), [
    ("slices", "yes"), ("slice_flush_s", 0), ("slice_flush_s", float("nan")),
    ("slice_lease_s", -1), ("slice_requests", 0), ("slice_requests", 1.5),
    ("slice_fraction", 0), ("slice_fraction", 1.5), ("slice_fraction", True)])
def test_bad_slice_options_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RedisOptions(**{field: value})
    assert info.value.field == field


def test_a_lease_shorter_than_four_flushes_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        RedisOptions(slice_flush_s=10, slice_lease_s=20)
    assert info.value.field == "slice_lease_s"


def test_slices_refuse_fail_open(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBudgetBackend(RedisOptions(slices=True, on_unavailable="fail_open"),
                           url=Secret(redis_server.url, opaque=False))
    assert info.value.field == "budget.options.on_unavailable"


def test_only_the_budget_serves_slices(redis_server: RedisServer) -> None:
    from squirrel_models_redis import RedisRateLimitStore

    with pytest.raises(ConfigError) as info:
        RedisRateLimitStore(RedisOptions(slices=True), url=Secret(redis_server.url,
                                                                  opaque=False))
    assert info.value.field == "rate_limits.options.slices"
