"""Leased slices on Redis (issue 16): the core's slice state machine against a real server,
options, and what a killed process's slices become."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
import redis
from squirrel_models.budget import Charge, LedgerRow
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions
from squirrel_models_redis.budget import _field, _row
from squirrel_models_redis.scripts import budget_keys

from tests.support.slice_machine import (
    SCENARIOS,
    StoreView,
    machine_backends,
    run_slice_machine,
    scenario_scope,
)

from .redisserver import RedisServer

pytestmark = pytest.mark.anyio


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
        self.stop_slices(backend)
        await backend._client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_slices_hold_the_invariant_over_interleavings(redis_server: RedisServer, prefix: str,
                                                      anyio_backend: str) -> None:
    make = machine_backends(partial(RedisBudgetBackend, url=Secret(redis_server.url, opaque=False)),
                            RedisOptions, key_prefix=prefix)
    run_slice_machine(make, lambda: RedisView(redis_server.url, prefix), anyio_backend=anyio_backend)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
async def test_slice_scenario(redis_server: RedisServer, prefix: str, scenario: Any) -> None:
    make = machine_backends(partial(RedisBudgetBackend, url=Secret(redis_server.url, opaque=False)),
                            RedisOptions, key_prefix=prefix)
    await scenario(make, RedisView(redis_server.url, prefix), scenario_scope(scenario))


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


async def test_a_flush_after_its_slice_expired_lowers_the_charge(
        make_backend: Any) -> None:
    """A process that stalls past its lease: the store charges its slice in full; its late
    flush writes its ledger row and lowers the charge by what that row accounts for, so the
    spend is counted once (committed = the slice's room = the ledger's costs)."""
    now = [1_000_000.0]
    stalled = make_backend(clock=lambda: now[0], slices=True, slice_flush_s=1000.0,
                           slice_lease_s=4000.0)
    other = make_backend(clock=lambda: now[0])
    charge = Charge("global", "total", "total", Decimal("1"))
    r = await stalled.reserve([charge], Decimal("0.10"), ttl=60)
    await stalled.settle(r, Decimal("0.10"), ledger=LedgerRow(
        "req", 1, "p", "p/m", "ok", 1, 1, 0, 0, Decimal("0.10"), None, 0.1, ("global",)))
    (u,) = await other.usage([charge])
    room = u.reserved  # the slice, nothing flushed yet
    assert room >= Decimal("0.10") and u.committed == 0
    now[0] += 4001
    assert await other.reconcile() == 1  # expired: charged in full
    (u,) = await other.usage([charge])
    assert (u.committed, u.reserved) == (room, 0)
    await stalled._slices.flush()  # the late flush
    (u,) = await other.usage([charge])
    assert (u.committed, u.reserved) == (room, 0), u  # counted once
    rows = await other.rows()
    assert sorted(r.cost for r in rows) == sorted([Decimal("0.10"), room - Decimal("0.10")])
    (charged,) = [r for r in rows if r.outcome == "charged"]
    assert charged.request_id.startswith("slice:") and charged.scopes == ("global",)
    await stalled.aclose()
