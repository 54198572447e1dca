"""The in-memory rate-limit store: the conformance kit, and its sliding log's corners."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import RateLimitExceeded
from squirrel_models.builtins.memory_ratelimit import MemoryRateLimitStore
from squirrel_models.ratelimit import RateCharge
from squirrel_models.testing.conformance import RateLimitStoreConformance

pytestmark = pytest.mark.anyio


class TestMemoryStore(RateLimitStoreConformance):
    @pytest.fixture
    def store(self) -> MemoryRateLimitStore:
        return MemoryRateLimitStore()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_retry_in_is_when_enough_room_leaves_the_window() -> None:
    """For a tpm charge, the room comes back when enough of the oldest tokens have left."""
    clock = FakeClock()
    store = MemoryRateLimitStore(clock=clock)
    tpm = RateCharge("model:p/m", "tpm", 1000)
    for tokens in (300, 300, 300):
        await store.reserve([tpm], tokens, ttl=600)
        clock.now += 10
    # at t=30: 900 used; 500 more needs the first two (300 + 300) to leave: at t=70
    with pytest.raises(RateLimitExceeded) as info:
        await store.reserve([tpm], 500, ttl=600)
    assert info.value.retry_in == pytest.approx(40.0)
    assert "tpm limit reached on model:p/m (900/1,000), room again in 40 s" in str(info.value)
    clock.now += 40
    await store.reserve([tpm], 500, ttl=600)


async def test_a_released_admission_in_the_middle_of_the_log_is_skipped() -> None:
    clock = FakeClock()
    store = MemoryRateLimitStore(clock=clock)
    rpm = RateCharge("p", "rpm", 3)
    leases = []
    for _ in range(3):
        leases.append(await store.reserve([rpm], 1, ttl=600))
        clock.now += 5
    await store.release(leases[1])
    await store.reserve([rpm], 1, ttl=600)  # the released one's room
    with pytest.raises(RateLimitExceeded) as info:
        await store.reserve([rpm], 1, ttl=600)
    # the first admission (t=0) leaves at t=60; now is t=15
    assert info.value.retry_in == pytest.approx(45.0)


async def test_one_call_with_two_charges_on_one_count_takes_both() -> None:
    store = MemoryRateLimitStore()
    twice = [RateCharge("global", "rpm", 3), RateCharge("global", "rpm", 3)]
    await store.reserve(twice, 1, ttl=60)
    with pytest.raises(RateLimitExceeded):
        await store.reserve(twice, 1, ttl=60)
    assert [u.used for u in await store.usage(twice[:1])] == [2]


async def test_settled_leases_do_not_pile_up() -> None:
    store = MemoryRateLimitStore()
    charges = [RateCharge("m", "rpm", 10**9), RateCharge("m", "concurrent", 10)]
    for _ in range(5000):
        await store.settle(await store.reserve(charges, 1, ttl=60), 1)
    assert store.open_leases == 0
    assert len(store._expiries) <= 1024 + 1


@given(st.lists(st.tuples(st.sampled_from(["reserve", "settle", "release", "wait"]),
                          st.integers(0, 400), st.floats(0, 1)), max_size=60))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_store_matches_a_brute_force_sliding_window(ops) -> None:
    """Any interleaving of reserve, settle, release and time passing: every admission decision
    and every count equals a brute-force recount of the window, and nothing passes a limit."""
    clock = FakeClock()
    store = MemoryRateLimitStore(clock=clock)
    window = 10.0
    rpm, tpm = RateCharge("m", "rpm", 5, window), RateCharge("m", "tpm", 1000, window)
    slot = RateCharge("m", "concurrent", 3, window)
    # the model: lease id -> [at, tokens, state] with state open / settled / released
    model: dict[str, list] = {}
    leases: list = []

    def live(kind: str) -> int:
        return sum(1 if kind == "rpm" else e[1] for e in model.values()
                   if e[2] != "released" and e[0] > clock.now - window)

    async def run() -> None:
        for op, n, frac in ops:
            if op == "reserve":
                fits = (live("rpm") + 1 <= 5 and live("tpm") + n <= 1000
                        and sum(e[2] == "open" for e in model.values()) + 1 <= 3)
                try:
                    lease = await store.reserve([rpm, tpm, slot], n, ttl=1000)
                except RateLimitExceeded:
                    assert not fits
                else:
                    assert fits
                    model[lease.id] = [clock.now, n, "open"]
                    leases.append(lease)
            elif op in ("settle", "release") and leases:
                lease = leases[int(frac * len(leases)) % len(leases)]
                e = model[lease.id]
                if op == "settle":
                    await store.settle(lease, min(n, lease.tokens))
                    if e[2] == "open":
                        e[1], e[2] = min(n, lease.tokens), "settled"
                else:
                    await store.release(lease)
                    if e[2] == "open":
                        e[2] = "released"
            elif op == "wait":
                clock.now += frac * 6
            used = [u.used for u in await store.usage([rpm, tpm, slot])]
            assert used == [live("rpm"), live("tpm"),
                            sum(e[2] == "open" for e in model.values())]
            assert used[0] <= 5 and used[1] <= 1000 and used[2] <= 3

    anyio.run(run)
