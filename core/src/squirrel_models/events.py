"""Events passed to observer hooks."""

from __future__ import annotations

import attrs

from .types import AIResponse, AttemptRecord, ModelCard

__all__ = ["AttemptEvent", "RequestEvent"]


@attrs.frozen
class AttemptEvent:
    """One attempt finished. ``scopes`` are the budget scope keys it was charged to."""

    request_id: str
    record: AttemptRecord
    model: ModelCard
    scopes: tuple[str, ...] = ()


@attrs.frozen
class RequestEvent:
    """A request ended with ``response`` or ``error`` (exactly one is set)."""

    request_id: str
    attempts: tuple[AttemptRecord, ...]
    response: AIResponse | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)
    duration_s: float = 0.0
