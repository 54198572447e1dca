"""Circuit-breaker cooldowns shared by many instances (optional; in-process by default).

The breakers themselves (:class:`~squirrel_models.fallback.CircuitBreakers`) stay in each
process: selection and the fallback chain ask them synchronously, on every request, at no
cost. With ``[circuit_breaker] shared = "<store>"`` a :class:`BreakerStateStore` from a plugin
(``register_breaker_stores``; ``squirrel-models-redis`` offers ``redis``) carries their
*cooldowns* between instances: when a model's breaker opens on one instance (or an upstream's
``Retry-After`` holds it), :class:`SharedBreakers` publishes "hold this model for N seconds";
each instance fetches the holds at most every ``sync_interval`` seconds, at the start of a
request, and holds those models too. So a model that failed on one instance cools down on
all of them, within ``sync_interval``.

Durations, not instants, cross the wire: the store dates them by its own clock, so instances
whose clocks disagree still agree on when a hold ends. Sharing is advisory: a store that is
slow or down costs a request at most ``sync_timeout`` seconds (and never past its deadline),
is tried again once per ``sync_interval`` (a cooldown waiting to be published included), is
logged once per outage, and leaves every instance with its own breakers, as without it.

Store contract (all async): ``publish(model_id, seconds)`` holds ``model_id`` for ``seconds``
from now on every instance (a longer hold already there is kept); ``fetch()`` returns
``{model_id: seconds left}`` of the holds not yet over; ``aclose()``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs

from .fallback import CircuitBreakers

__all__ = ["BreakerStateStore", "BreakerStoreType", "SharedBreakers"]

log = logging.getLogger("squirrel_models")


@runtime_checkable
class BreakerStateStore(Protocol):
    """Where breaker cooldowns are shared (see the module docstring)."""

    async def publish(self, model_id: str, seconds: float) -> None:
        """Hold ``model_id`` for ``seconds`` from now on every instance (a longer hold that is
        already there is kept)."""
        ...

    async def fetch(self) -> dict[str, float]:
        """``{model_id: seconds left}`` of the holds not yet over."""
        ...

    async def aclose(self) -> None:
        ...


@attrs.frozen
class BreakerStoreType:
    """A kind of breaker store a plugin offers, by ``name`` (``[circuit_breaker] shared``).
    ``factory(options)`` returns a :class:`BreakerStateStore`; ``options`` is the
    ``[circuit_breaker.shared_options]`` table structured into ``options_type``."""

    name: str
    factory: Any  # Callable[[options], BreakerStateStore]
    options_type: type | None = None
    description: str = ""


@attrs.define
class SharedBreakers:
    """Carries ``breakers``' cooldowns to and from ``store`` (see the module docstring)."""

    store: BreakerStateStore
    breakers: CircuitBreakers
    interval: float = 1.0
    timeout: float = 0.25
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, float] = attrs.field(factory=dict)  # model -> hold until (clock)
    _next_fetch: float = -math.inf
    _busy: bool = False
    _failing: bool = False
    #: While the store fails: not tried again before this (clock), publish or fetch alike.
    _retry_at: float = -math.inf

    def __attrs_post_init__(self) -> None:
        self.breakers.on_open = self.opened

    def opened(self, model_id: str, until: float) -> None:
        """``breakers`` opened (or extended) ``model_id``'s cooldown until ``until`` (its
        clock): publish it with the next :meth:`sync`."""
        self._pending[model_id] = max(until, self._pending.get(model_id, -math.inf))

    @property
    def pending(self) -> bool:
        """Cooldowns opened here and not yet published."""
        return bool(self._pending)

    def _resting(self) -> bool:
        """The store failed and its interval has not passed: a cooldown still to publish
        would otherwise send every request to it again, at its start and its end (a hung
        store cost each request two bounds)."""
        return self._failing and self.clock() < self._retry_at

    def due(self) -> bool:
        if self._resting():
            return False
        return bool(self._pending) or self.clock() >= self._next_fetch

    async def publish(self, deadline: float = math.inf) -> None:
        """Publish the cooldowns opened here now (the end of a request whose attempt opened
        one), shielded from cancellation, bounded by ``timeout`` and ``deadline`` (anyio's
        clock; a deadline already past publishes nothing: the next request will)."""
        if self._busy or not self._pending or self._resting():
            return
        end = min(deadline, anyio.current_time() + self.timeout)
        with anyio.CancelScope(shield=True, deadline=end):
            await self._run(fetch=False, bound=math.inf)

    async def sync(self, deadline: float = math.inf) -> None:
        """Publish the cooldowns opened here, and (every ``interval`` s) hold the models
        other instances cooled down. Bounded by ``timeout`` and ``deadline`` (anyio's clock);
        a failing store is logged once and skipped until the next interval."""
        if self._busy or not self.due():
            return
        now = self.clock()
        fetch = now >= self._next_fetch
        if fetch:
            self._next_fetch = now + self.interval
        await self._run(fetch, min(self.timeout, max(deadline - anyio.current_time(), 0.0)))

    async def _run(self, fetch: bool, bound: float) -> None:
        self._busy = True
        try:
            with anyio.move_on_after(bound) as scope:
                while self._pending:
                    model_id, until = next(iter(self._pending.items()))
                    left = until - self.clock()
                    if left > 0:
                        await self.store.publish(model_id, left)
                    if self._pending.get(model_id) == until:
                        del self._pending[model_id]
                if fetch:
                    holds = await self.store.fetch()
                    now = self.clock()
                    for model_id, left in holds.items():
                        if left > 0:
                            self.breakers.hold(model_id, now + left, share=False)
            if scope.cancelled_caught:
                self._failed(TimeoutError(f"no answer within {bound:.2f} s"))
            elif self._failing:
                self._failing = False
                log.warning("shared circuit-breaker state reachable again")
        except Exception as exc:  # advisory: never fail a request for it
            self._failed(exc)
        finally:
            self._busy = False

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self.clock() + self.interval
        if not self._failing:
            self._failing = True
            log.warning("shared circuit-breaker state unavailable (%s: %s): each instance "
                        "keeps its own breakers until it answers", type(exc).__name__, exc)

    async def aclose(self) -> None:
        self.breakers.on_open = None
        await self.store.aclose()


def shared_breakers(config: Any, plugins: Any, breakers: CircuitBreakers) -> SharedBreakers | None:
    """The :class:`SharedBreakers` that ``config`` (a :class:`~squirrel_models.config.Config`)
    asks for with ``[circuit_breaker] shared``, on ``breakers``; None when unset."""
    from .config import structure_options
    from .errors import ConfigError

    cfg = config.circuit_breaker
    if cfg.shared is None:
        return None
    stores = plugins.breaker_stores()
    st = stores.get(cfg.shared)
    if st is None:
        raise ConfigError(f"unknown breaker store {cfg.shared!r}; installed: "
                          f"{', '.join(sorted(stores)) or 'none'}{plugins.not_loaded()}",
                          field="circuit_breaker.shared")
    options = structure_options(cfg.shared_options, st.options_type,
                                field="circuit_breaker.shared_options", base_dir=config.base_dir)
    return SharedBreakers(st.factory(options), breakers, interval=cfg.sync_interval)
