"""The conformance suite of rate-limit stores: :class:`RateLimitStoreConformance`."""

from __future__ import annotations

import random

import anyio
import pytest

from ...errors import RateLimitExceeded
from ...ratelimit import RateCharge, RateLease, RateLimitStore

__all__ = ["RateLimitStoreConformance"]


class RateLimitStoreConformance:
    """Checks the rate-limit store contract of :mod:`squirrel_models.ratelimit`.

    Provide a ``store`` fixture yielding a fresh, empty store. Some tests sleep through short
    windows and leases (a fraction of a second each); the concurrency test runs for about
    ``storm_seconds`` (default 1.2 s: override the fixture for a slow store).
    """

    @pytest.fixture
    def storm_seconds(self) -> float:
        return 1.2

    def charge(self, kind: str, limit: int, scope: str = "model:p/m", window: float = 60.0
               ) -> RateCharge:
        return RateCharge(scope, kind, limit, window)  # type: ignore[arg-type]

    async def _used(self, store: RateLimitStore, *charges: RateCharge) -> list[int]:
        return [u.used for u in await store.usage(charges)]

    async def test_admits_within_the_limit_and_refuses_beyond(self, store: RateLimitStore
                                                               ) -> None:
        rpm = self.charge("rpm", 3)
        for _ in range(3):
            await store.reserve([rpm], 10, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([rpm], 10, ttl=60)
        e = info.value
        assert (e.scope, e.kind, e.limit, e.used, e.requested) == ("model:p/m", "rpm", 3, 3, 1)
        assert e.retry_in is not None and 0 < e.retry_in <= 60
        (u,) = await store.usage([rpm])
        assert (u.used, u.remaining, u.limit) == (3, 0, 3)
        assert u.retry_in is not None and 0 < u.retry_in <= 60

    async def test_reserve_is_all_or_nothing(self, store: RateLimitStore) -> None:
        roomy = self.charge("rpm", 100, scope="provider:p")
        tight = self.charge("tpm", 500, scope="key:team")
        slot = self.charge("concurrent", 10, scope="global")
        await store.reserve([roomy, tight, slot], 400, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([roomy, tight, slot], 200, ttl=60)
        assert (info.value.scope, info.value.kind, info.value.requested) == ("key:team", "tpm", 200)
        assert await self._used(store, roomy, tight, slot) == [1, 400, 1]

    async def test_tpm_reserves_the_worst_case_and_settle_sets_the_real_count(
            self, store: RateLimitStore) -> None:
        tpm = self.charge("tpm", 1000)
        lease = await store.reserve([tpm], 800, ttl=60)
        assert isinstance(lease, RateLease) and lease.tokens == 800
        (u,) = await store.usage([tpm])
        assert (u.used, u.reserved) == (800, 800)
        with pytest.raises(RateLimitExceeded):
            await store.reserve([tpm], 300, ttl=60)
        assert await store.settle(lease, 100) == 0
        (u,) = await store.usage([tpm])
        assert (u.used, u.reserved) == (100, 0)
        await store.reserve([tpm], 300, ttl=60)  # the difference came back at once
        assert await self._used(store, tpm) == [400]

    async def test_settle_above_the_reservation_counts_in_full(self, store: RateLimitStore
                                                               ) -> None:
        tpm = self.charge("tpm", 1000)
        lease = await store.reserve([tpm], 100, ttl=60)
        assert await store.settle(lease, 150) == 50
        assert await self._used(store, tpm) == [150]

    async def test_settle_frees_the_slot_and_keeps_the_request(self, store: RateLimitStore
                                                               ) -> None:
        rpm, slot = self.charge("rpm", 5), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, slot], 10, ttl=60)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([rpm, slot], 10, ttl=60)
        assert (info.value.kind, info.value.retry_in) == ("concurrent", None)
        await store.settle(lease, 10)
        assert await self._used(store, rpm, slot) == [1, 0]
        await store.reserve([rpm, slot], 10, ttl=60)
        assert await self._used(store, rpm, slot) == [2, 1]

    async def test_release_returns_all_room(self, store: RateLimitStore) -> None:
        rpm, tpm, slot = self.charge("rpm", 1), self.charge("tpm", 100), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, tpm, slot], 100, ttl=60)
        for charges in ([rpm], [tpm], [slot]):
            with pytest.raises(RateLimitExceeded):
                await store.reserve(charges, 1, ttl=60)
        await store.release(lease)
        assert await self._used(store, rpm, tpm, slot) == [0, 0, 0]
        await store.reserve([rpm, tpm, slot], 100, ttl=60)

    async def test_settle_and_release_are_idempotent(self, store: RateLimitStore) -> None:
        rpm, tpm, slot = self.charge("rpm", 10), self.charge("tpm", 1000), self.charge("concurrent", 5)
        lease = await store.reserve([rpm, tpm, slot], 500, ttl=60)
        assert await store.settle(lease, 200) == 0
        assert await store.settle(lease, 900) == 0  # a second settle changes nothing
        await store.release(lease)  # nor does a release after the settle
        assert await self._used(store, rpm, tpm, slot) == [1, 200, 0]
        other = await store.reserve([rpm, tpm, slot], 300, ttl=60)
        await store.release(other)
        await store.release(other)
        await store.settle(other, 300)  # nor a settle after the release
        assert await self._used(store, rpm, tpm, slot) == [1, 200, 0]

    async def test_more_than_the_limit_never_fits(self, store: RateLimitStore) -> None:
        tpm = self.charge("tpm", 100)
        with pytest.raises(RateLimitExceeded) as info:
            await store.reserve([tpm], 101, ttl=60)
        assert info.value.retry_in is None and info.value.never
        assert await self._used(store, tpm) == [0]

    async def test_counts_are_per_scope_and_kind(self, store: RateLimitStore) -> None:
        a, b = self.charge("rpm", 1, scope="model:p/a"), self.charge("rpm", 1, scope="model:p/b")
        await store.reserve([a], 10, ttl=60)
        await store.reserve([b], 10, ttl=60)
        await store.reserve([self.charge("tpm", 10, scope="model:p/a")], 10, ttl=60)
        assert await self._used(store, a, b) == [1, 1]

    async def test_usage_of_an_unknown_scope_is_zero(self, store: RateLimitStore) -> None:
        charges = [self.charge(k, 5, scope="key:nobody") for k in ("rpm", "tpm", "concurrent")]
        for u in await store.usage(charges):
            assert (u.used, u.reserved, u.remaining, u.retry_in) == (0, 0, 5, 0)

    async def test_the_window_slides(self, store: RateLimitStore) -> None:
        """An admission counts for ``window`` seconds after it, then its room comes back;
        ``retry_in`` says when (within the window, never before the room is back)."""
        # The second admission comes 0.5 s after the first, so it is still in the window
        # 0.45 s after the first left (the margin was 0.15 s: on a loaded machine the last
        # reserve came later and was admitted). Times are read around each call: a check that
        # depends on how late a call came is made only when the call came early enough.
        window = 1.2
        rpm = self.charge("rpm", 2, window=window)
        t0 = anyio.current_time()
        await store.reserve([rpm], 1, ttl=60)
        await anyio.sleep(0.5)
        t2 = anyio.current_time()
        await store.reserve([rpm], 1, ttl=60)
        try:
            await store.reserve([rpm], 1, ttl=60)
        except RateLimitExceeded as exc:
            retry = exc.retry_in
            # when the first one leaves
            assert retry is not None and 0 < retry <= window - 0.5 + 0.01, retry
        else:  # admitted: only right if the first had left the window already
            assert anyio.current_time() - t0 >= window, "a third admission within the window"
            return
        await anyio.sleep(retry + 0.05)
        await store.reserve([rpm], 1, ttl=60)  # the first left the window: room for one
        try:
            await store.reserve([rpm], 1, ttl=60)
        except RateLimitExceeded:
            pass
        else:  # admitted: only right if the second had left the window too
            assert anyio.current_time() - t2 >= window, "the second admission left too soon"

    async def test_leases_expire_and_give_their_slot_back(self, store: RateLimitStore) -> None:
        """A lease past its ttl (a killed process's, say) frees its concurrency slot; its
        request and tokens still count in the window, and a late settle still sets them."""
        rpm, tpm, slot = self.charge("rpm", 5), self.charge("tpm", 1000), self.charge("concurrent", 1)
        lease = await store.reserve([rpm, tpm, slot], 600, ttl=0.05)
        assert lease.expires_at > lease.at
        await anyio.sleep(0.15)
        assert await store.reconcile() >= 1
        assert await self._used(store, rpm, tpm, slot) == [1, 600, 0]
        second = await store.reserve([rpm, slot], 1, ttl=60)  # the slot came back
        await store.settle(lease, 250)
        assert await self._used(store, rpm, tpm, slot) == [2, 250, 1]
        await store.release(second)

    async def test_a_lease_without_a_slot_expires_and_the_store_goes_on(
            self, store: RateLimitStore) -> None:
        """A lease holding no concurrency slot (only rpm and tpm, the usual limits) whose
        process died expires like any other, and the store keeps admitting: on Redis its
        expiry raised a script error, and from then on every reserve of every instance on
        that prefix failed."""
        rpm, tpm = self.charge("rpm", 5), self.charge("tpm", 1000)
        for _ in range(2):  # never settled: their callers died
            await store.reserve([rpm, tpm], 100, ttl=0.05)  # (the second finds the first expired)
            await anyio.sleep(0.15)
        await store.reconcile()  # expires the second
        third = await store.reserve([rpm, tpm], 100, ttl=60)
        assert await self._used(store, rpm, tpm) == [3, 300]
        await store.settle(third, 40)
        assert await self._used(store, rpm, tpm) == [3, 240]

    async def test_concurrent_admission_never_passes_a_limit(
            self, store: RateLimitStore, storm_seconds: float) -> None:
        """Many tasks reserving, settling and releasing for a while against rpm, tpm and
        concurrency limits with short windows: in every window, what was admitted and not
        released stays within each limit, and the requests in flight never pass theirs."""
        window = 0.25
        rpm = self.charge("rpm", 12, window=window)
        tpm = self.charge("tpm", 1500, window=window)
        slot = self.charge("concurrent", 4)
        rng = random.Random(14)
        kept: list[tuple[float, int]] = []  # (admitted at, final tokens) of unreleased leases
        inflight = peak = refused = 0
        stop = anyio.current_time() + storm_seconds

        async def worker() -> None:
            nonlocal inflight, peak, refused
            while anyio.current_time() < stop:
                tokens = rng.randint(50, 400)
                try:
                    lease = await store.reserve([rpm, tpm, slot], tokens, ttl=60)
                except RateLimitExceeded:
                    refused += 1
                    await anyio.sleep(rng.random() / 50)
                    continue
                inflight += 1
                peak = max(peak, inflight)
                await anyio.sleep(rng.random() / 100)
                inflight -= 1
                if rng.random() < 0.2:
                    await store.release(lease)
                else:
                    used = rng.randint(0, tokens)
                    await store.settle(lease, used)
                    kept.append((lease.at, used))

        async with anyio.create_task_group() as tg:
            for _ in range(24):
                tg.start_soon(worker)
        assert kept and refused, "the storm must both admit and refuse"
        assert peak <= slot.limit
        kept.sort()
        for j, (at_j, _) in enumerate(kept):
            # what counted together with admission j: the kept admissions still in its window
            together = [t for at, t in kept[:j + 1] if at > at_j - window + 1e-6]
            assert len(together) <= rpm.limit, f"{len(together)} requests in one window"
            assert sum(together) <= tpm.limit, f"{sum(together)} tokens in one window"
        assert await self._used(store, slot) == [0]
