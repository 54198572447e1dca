"""Per-request state shared by the manager and its response streams (internal)."""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

import anyio
import attrs

from .budget import CLEANUP_GRACE, CLEANUP_TIMEOUT, LedgerRow, PendingRow, Reservation, cleanup_bound
from .decision import Decision
from .ratelimit import RateLease
from .tokens import Estimate
from .types import AIRequest, AttemptRecord, ModelCard, ModelRequirements, ProviderResponse, StreamChunk, Usage

__all__ = ["CLEANUP_GRACE", "CLEANUP_TIMEOUT", "Request", "Result", "Stream", "close_within", "shielded"]

if TYPE_CHECKING:
    from .manager import ModelManager

T = TypeVar("T")

log = logging.getLogger("squirrel_models")


class Result:
    """A successful attempt: the provider's answer, its usage and cost (a plain class: one
    is made per request, and an attrs one costs several times as much to build)."""

    __slots__ = ("cost", "response", "usage")

    def __init__(self, response: ProviderResponse, usage: Usage, cost: Decimal | None) -> None:
        self.response, self.usage, self.cost = response, usage, cost


@attrs.define
class Stream:
    """A streaming attempt that produced its first chunk (or ended at once)."""

    card: ModelCard
    iterator: AsyncIterator[StreamChunk]
    first: StreamChunk | None
    reservation: Reservation | None
    estimate: Estimate
    started: float
    usage: Usage | None = None
    cost: Decimal | None = None


def _new_prefix() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    # From 2**60: every count has 16 hex digits, and hex() is cheaper than a format.
    _counter = itertools.count(1 << 60)


_prefix: str
_counter: itertools.count[int]
_new_prefix()
# A forked child would repeat its parent's ids: it draws a prefix of its own.
os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """A new request id: 32 hex digits, unique across processes sharing a ledger: 16 random
    ones drawn once per process (again in a forked child) and a 16-digit count (no system
    call per request)."""
    return _prefix + hex(next(_counter))[2:]


class Request:
    """One request under way: what was asked and decided, and what its attempts did. It is
    also what the fallback chain runs the attempts through (``attempt``, ``worst_case``,
    ``on_attempt``, ``reachable``: see ``FallbackChain.run_with``), so no closure is built per
    request."""

    __slots__ = ("_loose", "deadline", "decision", "id", "in_flight", "lease", "ledger",
                 "manager", "prompt_bound", "recording", "records", "request", "requirements",
                 "settled_rows", "started", "streaming", "timeout")

    def __init__(self, manager: ModelManager, id: str, request: AIRequest,
                 requirements: ModelRequirements, decision: Decision,
                 prompt_bound: int | None = None, deadline: float | None = None,
                 timeout: float = 0.0, streaming: bool = False, recording: bool = True
                 ) -> None:
        self.manager = manager
        self.id = id
        self.request = request
        self.requirements = requirements
        self.decision = decision
        self.records: list[AttemptRecord] = []
        #: Ledger rows to record at the end of the request (see :data:`PendingRow`).
        self.ledger: list[PendingRow] = []
        self.started = time.perf_counter()
        #: Attempt numbers whose ledger row the backend wrote with their settlement (None: none).
        self.settled_rows: set[int] | None = None
        #: The request's deadline on the event loop's clock (anyio.current_time()), once known.
        self.deadline = deadline
        self.timeout = timeout
        #: The upstream call under way, if any: (model, perf_counter at its start). The
        #: deadline handler records it as a timeout when the deadline cuts it short, with
        #: the usage and cost ``charge_unanswered`` charged it when they follow.
        self.in_flight: (tuple[ModelCard, float]
                         | tuple[ModelCard, float, Usage, Decimal | None] | None) = None
        #: The rate-limit lease of the attempt under way (attempts run one at a time), if any.
        self.lease: RateLease | None = None
        #: The prompt's upper bound (tokens.upper_bound), computed once for the ranking.
        self.prompt_bound = prompt_bound
        #: A stream: the chain opens streams, and a stream's success is reported at its end.
        self.streaming = streaming
        self._loose: Mapping[str, ModelCard] | None = None
        #: Whether the metrics record (asked once per request: see ``Metrics.recording``).
        self.recording = recording

    def past_deadline(self) -> bool:
        """Whether the request's deadline has passed (a cancellation now is the deadline's)."""
        # asyncio may run a timer up to its clock's resolution early: a millisecond of slack.
        return self.deadline is not None and anyio.current_time() >= self.deadline - 0.001

    @property
    def cleanup_deadline(self) -> float:
        """Until when cleanup's store calls (settle, release, ledger rows) may run: see
        :func:`shielded`."""
        return math.inf if self.deadline is None else self.deadline + CLEANUP_GRACE

    def row_written(self, number: int) -> None:
        if self.settled_rows is None:
            self.settled_rows = {number}
        else:
            self.settled_rows.add(number)

    # --- what the fallback chain calls ------------------------------------------------------

    def attempt(self, card: ModelCard, number: int) -> Awaitable[Result | Stream]:
        if self.streaming:
            return self.manager._open_stream(self, card)
        return self.manager._attempt(self, card, number)

    def worst_case(self, card: ModelCard) -> Decimal | None:
        return self.manager.tokens.estimate(self.request, card).worst_case_cost

    def on_attempt(self, rec: AttemptRecord, card: ModelCard) -> None:
        self.manager._report(self, rec, card, deferred=self.streaming)

    def reachable(self, model_id: str) -> ModelCard | None:
        """A ``[fallback.graph]`` target outside the ranking, when the request may go there:
        it meets every requirement but the ``models`` pin, which says where a request goes
        first; an explicit edge says where it goes next (never past ``allowed_models``, a
        permission). Ranked once per request, on first use."""
        m = self.manager
        if not m.config.fallback.graph:
            return None
        if self._loose is None:
            loose = attrs.evolve(self.requirements, models=self.requirements.allowed_models)
            decision = m.selector.rank(loose, m._shape(self.request))
            self._loose = {c.id: c for c in decision.cards}
        return self._loose.get(model_id)


async def shielded(fn: Callable[[], Awaitable[T]], inline: bool = False,
                   deadline: float = math.inf) -> T | None:
    """Run cleanup even while being cancelled: budget store calls inside end by ``deadline``
    (anyio's clock; a request's :attr:`Request.cleanup_deadline`; see
    :func:`squirrel_models.budget.cleanup_bound`), and the whole of it is cancelled after
    :data:`CLEANUP_TIMEOUT` at most. Returns what ``fn`` returned, or None if it ran out of
    time.

    Store calls stop their database work by the bound themselves and raise
    :class:`~squirrel_models.errors.BudgetStoreTimeout`, since a worker thread cannot be
    cancelled from outside (and a store whose calls run in threads stops waiting for them
    then; see :mod:`squirrel_models.storethreads`). Closing an upstream's stream is bounded
    by :func:`close_within`.

    ``inline``: ``fn`` never suspends (a ``nonblocking`` budget backend), so cancellation
    cannot reach it and the cancel scope (much of the cost of a fast request) is skipped.
    """
    if inline:
        return await fn()
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + CLEANUP_TIMEOUT), \
            cleanup_bound(deadline):
        return await fn()
    return None


async def close_within(aclose: Callable[[], Awaitable[object]], until: float) -> None:
    """Close an upstream's stream during cleanup: shielded from the caller's cancellation, but
    cancelled at ``until`` (a request's :attr:`Request.cleanup_deadline`), and after
    :data:`CLEANUP_TIMEOUT` at most. A stream whose close hangs (a server that never answers
    the close, a connection that never drains) cannot hold the request past its bound; what
    the close left undone is the HTTP client's to clean up (its connection is dropped). A
    close that raises (a provider's bug) is logged: the attempt's outcome is decided already,
    and its settlement must follow."""
    with anyio.CancelScope(shield=True,
                           deadline=min(until, anyio.current_time() + CLEANUP_TIMEOUT)):
        try:
            await aclose()
        except Exception as exc:
            log.warning("closing a provider's stream raised %s (a bug in its plugin): ignored",
                        type(exc).__name__)


async def noop() -> None:
    return None


def ledger_row(ctx: Request, number: int, card: ModelCard, outcome: str, usage: Usage | None,
                cost: Decimal | None, error_type: str | None, latency_s: float,
                scopes: tuple[str, ...]) -> LedgerRow:
    u = usage or Usage()
    return LedgerRow(ctx.id, number, card.provider, card.id, outcome, u.input_tokens,
                     u.output_tokens, u.cached_tokens, u.reasoning_tokens, cost, error_type,
                     latency_s, scopes, usage_source=u.source)
