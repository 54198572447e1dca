"""Live statistics per model: observed latency, recent reliability, load.

Updated after every attempt; read by scoring rules through immutable :class:`ModelStats`
snapshots. Each model's ``version`` grows on every update so the selector can reuse scores
of models whose statistics did not change.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

import attrs

__all__ = ["ModelStats", "StatsRegistry"]

ALPHA = 0.2  # weight of the newest observation in the moving averages


@attrs.frozen(slots=True)
class ModelStats:
    """A snapshot of one model's live statistics.

    ``latency_ms`` is a moving average of successful attempts (None until observed);
    ``success_rate`` a moving average of outcomes (1.0 until observed); ``queue_depth`` and
    ``tokens_per_s`` come from providers that report load (local models); ``breaker_open``
    says the circuit breaker is refusing calls.
    """

    latency_ms: float | None = None
    success_rate: float = 1.0
    samples: int = 0
    in_flight: int = 0
    queue_depth: float = 0.0
    tokens_per_s: float | None = None
    breaker_open: bool = False


EMPTY = ModelStats()


@attrs.define
class _Live:
    latency_ms: float | None = None
    success_rate: float = 1.0
    samples: int = 0
    in_flight: int = 0
    version: int = 0
    # The last plain snapshot (no live figures) and the (version, breaker_open) it was for.
    snap: ModelStats | None = None
    snap_key: tuple[int, bool] = (-1, False)


@attrs.define
class StatsRegistry:
    """Thread-safe store of per-model statistics."""

    _live: dict[str, _Live] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def _get(self, model_id: str) -> _Live:
        live = self._live.get(model_id)
        if live is None:
            live = self._live.setdefault(model_id, _Live())
        return live

    def started(self, model_id: str) -> None:
        with self._lock:
            live = self._live.get(model_id) or self._get(model_id)
            live.in_flight += 1
            live.version += 1

    def finished(self, model_id: str, *, ok: bool, latency_s: float | None,
                 counts: bool = True) -> None:
        """Record the end of an attempt. ``counts`` False: ended without a verdict (cancelled)."""
        with self._lock:
            live = self._live.get(model_id) or self._get(model_id)
            n = live.in_flight - 1
            live.in_flight = n if n > 0 else 0
            live.version += 1
            if not counts:
                return
            live.samples += 1
            outcome = 1.0 if ok else 0.0
            live.success_rate += ALPHA * (outcome - live.success_rate)
            if ok and latency_s is not None:
                ms = latency_s * 1000
                live.latency_ms = ms if live.latency_ms is None else (
                    live.latency_ms + ALPHA * (ms - live.latency_ms))

    def in_flight(self, model_id: str) -> int:
        """Attempts on ``model_id`` under way now."""
        live = self._live.get(model_id)
        return 0 if live is None else live.in_flight

    def ids(self) -> Collection[str]:
        """The models with statistics (a live view): every other model's snapshot is empty."""
        return self._live.keys()

    def version(self, model_id: str) -> int:
        live = self._live.get(model_id)
        return 0 if live is None else live.version

    def figures(self, model_id: str) -> tuple[float | None, float, int, int] | None:
        """A model's statistics now as a plain tuple (latency, success rate, samples, in
        flight), None when it has none: what a ranking of one model keeps, made into a
        :class:`ModelStats` (:func:`from_figures`) only if its scores are read."""
        live = self._live.get(model_id)
        if live is None:
            return None
        return (live.latency_ms, live.success_rate, live.samples, live.in_flight)

    def snapshot(self, model_id: str, *, extra: Mapping[str, float] | None = None,
                 breaker_open: bool = False) -> ModelStats:
        live = self._live.get(model_id)
        if live is None and not extra and not breaker_open:
            return EMPTY
        if live is not None and not extra:
            # Reuse the snapshot while the model's statistics have not changed.
            key = (live.version, breaker_open)
            snap = live.snap
            if snap is None or live.snap_key != key:
                snap = ModelStats(live.latency_ms, live.success_rate, live.samples,
                                  live.in_flight, 0.0, None, breaker_open)
                live.snap, live.snap_key = snap, key
            return snap
        extra = extra or {}
        live = live or _Live()
        return ModelStats(
            latency_ms=live.latency_ms,
            success_rate=live.success_rate,
            samples=live.samples,
            in_flight=live.in_flight,
            queue_depth=float(extra.get("queue_depth", 0.0)),
            tokens_per_s=extra.get("tokens_per_s"),
            breaker_open=breaker_open,
        )

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._live.pop(model_id, None)


def from_figures(figures: tuple[float | None, float, int, int]) -> ModelStats:
    """The snapshot :meth:`StatsRegistry.snapshot` takes of the same ``figures``."""
    latency_ms, success_rate, samples, in_flight = figures
    return ModelStats(latency_ms, success_rate, samples, in_flight, 0.0, None, False)
