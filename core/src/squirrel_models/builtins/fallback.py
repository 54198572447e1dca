"""Built-in fallback strategies: retry, graph, larger_context, cheaper, next_candidate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import (
    BudgetExceeded,
    ContextWindowExceeded,
    CostCeilingExceeded,
    InvalidRequestError,
    ModelError,
    RateLimitExceeded,
    RateLimitTooSmall,
    UnpricedModel,
)
from ..fallback import FallbackContext, FallbackStep, FallbackStrategyType
from ..hookspecs import hookimpl


def _non_negative(instance: Any, attribute: Any, value: float) -> None:
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen
class RetryOptions:
    """``[fallback.options.retry]``: retries per model and the backoff between them (s)."""

    max_retries: int = attrs.field(default=1, validator=_non_negative)
    base_delay: float = attrs.field(default=0.25, validator=_non_negative)
    max_delay: float = attrs.field(default=8.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.base_delay > self.max_delay:  # capped without a word: base_delay did nothing
            raise ValueError(f"base_delay must be at most max_delay ({self.max_delay:g} s, the "
                             f"backoff's cap), got {self.base_delay:g}")


@attrs.frozen
class Retry:
    """Retry the same model on transient errors, with exponential backoff and full jitter.

    A ``retry_after`` from the upstream (``Retry-After``, rate-limit headers) replaces the
    backoff; when it would pass the deadline, the strategy declines and the next one decides.
    The jitter is drawn from ``ctx.rng``, seeded from the manager's seed: the same seed and the
    same failures give the same delays.
    """

    max_retries: int = 1
    base_delay: float = 0.25
    max_delay: float = 8.0
    name: str = "retry"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        # An open breaker means "try elsewhere", unless the upstream itself said when to
        # come back (Retry-After): then waiting for it is the retry.
        return (isinstance(error, ModelError) and error.retryable
                and ctx.tries.get(ctx.current.id, 0) <= self.max_retries
                and (ctx.is_available(ctx.current.id)
                     or getattr(error, "retry_after", None) is not None))

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        n = ctx.tries.get(ctx.current.id, 1)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(float(retry_after), ctx.retry_in(ctx.current.id))
        else:
            delay = ctx.rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (n - 1)))
        if delay >= ctx.remaining():
            return None
        return FallbackStep(ctx.current, delay, f"retry {n} after {delay:.2f}s")


def _next_in(ctx: FallbackContext, ids: tuple[str, ...]) -> Any:
    """The first of ``ids`` not tried yet that the request may go to: a ranked candidate,
    or a model only the request's ``models`` pin left out."""
    by_id = {c.id: c for c in ctx.untried()}
    for mid in ids:
        if mid in by_id:
            return by_id[mid]
        if mid in ctx.tries or any(c.id == mid for c in ctx.candidates):
            continue  # tried, or a candidate whose breaker is open
        card = ctx.reachable(mid)
        if card is not None and ctx.is_available(mid):
            return card
    return None


@attrs.frozen
class Graph:
    """Follow ``[fallback.graph]``: after a model fails, the untried models it names, in order.

    An edge is an explicit instruction, so it is followed even to a model the request's
    ``models`` pin leaves out; never past any other requirement (capabilities, features,
    tags, providers allowed or excluded, a context window it surely does not fit,
    ``max_cost_per_1k_tokens``, ``max_latency_ms``) nor, per attempt, the budgets and
    ``max_request_cost``.
    """

    name: str = "graph"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return bool(ctx.graph.get(ctx.current.id)) and _fallback_worthy(error)

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        card = _next_in(ctx, ctx.graph.get(ctx.current.id, ()))
        return None if card is None else FallbackStep(card, 0.0, f"graph: {ctx.current.id} -> "
                                                                   f"{card.id}")


@attrs.frozen
class LargerContext:
    """On context overflow, the best-ranked untried model with a larger window."""

    name: str = "larger_context"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return isinstance(error, ContextWindowExceeded)

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        assert isinstance(error, ContextWindowExceeded)
        need = max(ctx.current.context_window + 1, (error.needed or 0))
        for card in ctx.untried():
            if card.context_window >= need:
                return FallbackStep(card, 0.0, f"larger context: {card.context_window} tokens")
        return None


@attrs.frozen
class Cheaper:
    """On budget pressure (a budget or the request's ceiling), the best-ranked untried model
    whose worst case is cheaper than the one refused."""

    name: str = "cheaper"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return isinstance(error, BudgetExceeded | CostCeilingExceeded)

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        refused = ctx.worst_case(ctx.current)
        if refused is None:
            return None
        for card in ctx.untried():
            cost = ctx.worst_case(card)
            if cost is not None and cost < refused:
                return FallbackStep(card, 0.0, f"cheaper: worst case ${cost:f}")
        return None


def _fallback_worthy(error: BaseException) -> bool:
    """Errors another model may not share. 400/422 describe the request: no model helps;
    an exhausted global or caller budget refuses every model alike."""
    if isinstance(error, InvalidRequestError):
        # 404: this model is unknown upstream; model_specific: only this model cannot take it.
        return error.status_code == 404 or error.model_specific
    if isinstance(error, RateLimitTooSmall):
        # Even on a caller's key or the global scope: another model's worst case (its output
        # cap, its tokenizer) may fit where this one's never will.
        return True
    if isinstance(error, BudgetExceeded | RateLimitExceeded):
        # A limit on the model or its provider: another model has its own room. A caller's
        # key or the global scope refuses every model alike.
        return error.scope.startswith(("model:", "provider:"))
    return isinstance(error, ModelError | UnpricedModel)


@attrs.frozen
class NextCandidate:
    """Any model-specific failure: the next untried candidate in ranking order."""

    name: str = "next_candidate"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return _fallback_worthy(error) and not getattr(error, "partial_text", "")

    async def try_fallback(self, error: BaseException, ctx: FallbackContext
                           ) -> FallbackStep | None:
        untried = ctx.untried()
        return FallbackStep(untried[0], 0.0, "next candidate") if untried else None


def _retry(options: RetryOptions | Mapping[str, Any]) -> Retry:
    if isinstance(options, RetryOptions):
        return Retry(options.max_retries, options.base_delay, options.max_delay)
    return _retry(RetryOptions(**dict(options)))


@hookimpl
def register_fallback_strategies() -> list[FallbackStrategyType]:
    return [
        FallbackStrategyType("retry", _retry, Retry.__doc__ or "", RetryOptions),
        FallbackStrategyType("graph", lambda o: Graph(), Graph.__doc__ or ""),
        FallbackStrategyType("larger_context", lambda o: LargerContext(),
                             LargerContext.__doc__ or ""),
        FallbackStrategyType("cheaper", lambda o: Cheaper(), Cheaper.__doc__ or ""),
        FallbackStrategyType("next_candidate", lambda o: NextCandidate(),
                             NextCandidate.__doc__ or ""),
    ]
