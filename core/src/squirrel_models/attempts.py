"""One attempt of a request, as the fallback chain runs it: estimate and reserve its worst
case, call the provider, then settle what it used (or settle what a failure is known to have
used and release the rest), and report it to metrics, the ledger and observers; the end of a
request (ledger batch, observers). A mixin of ``ModelManager`` (internal)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import NoReturn

import anyio
import attrs

from . import upstream
from .attempt import Request, Result, Stream, close_within, ledger_row, shielded
from .budget import Charge, LedgerRow, Reservation, pending_row
from .config import lease_ttl
from .errors import (
    BudgetStoreError,
    BudgetStoreTimeout,
    DeadlineExceeded,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    SquirrelError,
)
from .events import AttemptEvent, RequestEvent
from .managerbase import ManagerBase
from .plugincheck import answer_problem, checked_error, chunk_problem, malformed
from .secrets import sanitize
from .tokens import OFF_LOOP_TOKENS, Estimate, possible, upper_bound
from .tokens import ceiling as ceiling_of
from .types import (
    AIRequest,
    AIResponse,
    AttemptRecord,
    Choice,
    ModelCard,
    ProviderResponse,
    StreamChunk,
    Usage,
)
from .unanswered import charged_usage, may_have_reached, sole_cancellation

__all__ = ["Attempts"]

log = logging.getLogger("squirrel_models")


class Attempts(ManagerBase):
    """The attempt lifecycle of ``ModelManager`` (see the module)."""

    def _report(self, ctx: Request, rec: AttemptRecord, card: ModelCard, *,
                deferred: bool = False) -> None:
        """Report an attempt to metrics, the ledger and observers. ``deferred``: a stream's
        successful attempt is reported when the stream ends, with what it really used."""
        if deferred and rec.outcome == "ok":
            return
        err = type(rec.error).__name__ if rec.error is not None else None
        if ctx.recording:
            self.metrics.attempt(model=card.id, provider=card.provider, outcome=rec.outcome,
                                 error=err, usage=rec.usage, duration=rec.latency_s)
        # Written with its settlement: not again in the end-of-request batch.
        written = ctx.settled_rows is not None and rec.number in ctx.settled_rows
        observers = self._observers
        if written and not observers:
            return
        charges = self.tokens.charges(card, ctx.request.budget_key) if self.tokens.limits else ()
        scopes = tuple([c.scope for c in charges]) if charges else ()
        if not written and self._ledger_backend:
            # Built into a LedgerRow at the end of the request, or when read (record_pending).
            cost = rec.cost
            if cost is None:
                cost = self._attempt_cost(rec, card)
            u = rec.usage
            if u is None:
                ctx.ledger.append((ctx.id, rec.number, card.provider, card.id, rec.outcome, 0, 0,
                                   0, 0, cost, err, rec.latency_s, scopes, time.time(),
                                   "reported"))
            else:
                ctx.ledger.append((ctx.id, rec.number, card.provider, card.id, rec.outcome,
                                   u.input_tokens, u.output_tokens, u.cached_tokens,
                                   u.reasoning_tokens, cost, err, rec.latency_s, scopes,
                                   time.time(), u.source))
        if observers:
            self.plugins.attempt_finished(AttemptEvent(ctx.id, rec, card, scopes))

    @staticmethod
    def _attempt_cost(rec: AttemptRecord, card: ModelCard) -> Decimal | None:
        """What an attempt cost: its settled cost, a failure's charge (its partial usage, or
        what ``charge_unanswered`` charged), else nothing ($0) for a priced model (it never
        reached the provider, or the policy is ``nothing``); None (unknown) only when the
        model has no price."""
        if rec.cost is not None:
            return rec.cost
        partial: Decimal | None = getattr(rec.error, "cost", None)
        if partial is not None:
            return partial
        return None if card.price is None else Decimal(0)

    async def _finish(self, ctx: Request, response: AIResponse | None,
                      error: BaseException | None, timeout: float) -> None:
        if isinstance(error, SquirrelError):
            sanitize(error)  # raised already, so its chain is complete: see secrets.sanitize
        failed: BaseException | None = None
        if self._shared is not None and self._shared.pending:
            # A breaker opened during this request: tell the other instances now.
            await self._shared.publish(math.inf if ctx.deadline is None else ctx.deadline)
        if ctx.ledger:
            try:
                await self._record(ctx)
            except BudgetStoreError as exc:
                if isinstance(exc, BudgetStoreTimeout) and exc.pending:
                    # Written in the background (a failure there is logged): the answer stands.
                    log.debug("ledger rows of request %s left to the background: %s", ctx.id, exc)
                elif error is not None:  # the request already fails: say so, keep its error
                    log.warning("ledger rows of request %s not recorded: %s", ctx.id, exc)
                else:
                    failed = self._store_failed(exc, timeout, ctx)
        if self._observers:
            self.plugins.request_finished(RequestEvent(
                ctx.id, tuple(ctx.records), response, failed or error,
                time.perf_counter() - ctx.started))
        if failed is not None:
            if isinstance(failed, SquirrelError):
                sanitize(failed)
            raise failed from failed.__cause__

    async def _record(self, ctx: Request) -> None:
        """Record the request's pending ledger rows (see :data:`PendingRow`): handed as they
        are to a backend that builds rows when they are read (``record_pending``), else built
        now and recorded, shielded (see :func:`shielded`)."""
        backend = self.budget_backend
        pending = self._record_pending
        if pending is not None:
            pending(ctx.ledger)
            return
        rows = [pending_row(p) for p in ctx.ledger]
        await shielded(lambda: backend.record(rows),  # type: ignore[attr-defined]
                       self._inline, ctx.cleanup_deadline)

    @staticmethod
    def _store_failed(exc: BudgetStoreError, timeout: float, ctx: Request) -> BaseException:
        """The error a request ends with when a budget store call failed: ``exc`` itself, or
        :class:`DeadlineExceeded` caused by it when the request's deadline stopped the call."""
        if isinstance(exc, BudgetStoreTimeout) and exc.by_deadline:
            err = DeadlineExceeded(timeout=timeout, attempts=ctx.records)
            err.__cause__ = exc
            return err
        return exc

    def _begin_attempt(self, ctx: Request, card: ModelCard
                       ) -> tuple[Estimate | None, int, int | None, tuple[Charge, ...]]:
        """Estimate and check one attempt's worst case, and admit it where no store call is
        needed: returns the estimate (None: nothing reads the prompt's count, so none is
        built; :meth:`_estimate` builds it should a failure need it), the output cap to send,
        the tokens to admit in the rate-limit store (None: no configured limit) and the
        budget charges that apply (empty: none); :meth:`_reserve_attempt` does the rest when
        either needs it (most requests: neither, and no coroutine is made)."""
        ceiling = ctx.requirements.max_request_cost
        request = ctx.request
        tokens, limiter = self.tokens, self.limiter
        bound = ctx.prompt_bound if ctx.prompt_bound is not None else upper_bound(request).tokens
        if not tokens.limits and ceiling is None and not ctx.recording:
            # The common case: no budget, cost ceiling, configured rate limit or recording
            # metrics reads the prompt's count; only a tight window (None) or a token budget
            # the upstream announced (counts_tokens) may need it.
            cap = tokens.roomy_cap(request, card, bound)
            if cap is not None:
                if limiter.idle:
                    return None, cap, None, ()
                prompt = ceiling_of(bound, request)
                if not limiter.config.limits:
                    if not (limiter.announces_tokens(card) and limiter.counts_tokens(
                            card, request.budget_key, prompt + tokens.output_cap(request, card))):
                        limiter.admit_unconfigured(card, prompt + cap)
                        return None, cap, None, ()
                elif not limiter.counts_tokens(card, request.budget_key,
                                               prompt + tokens.output_cap(request, card)):
                    return None, cap, prompt + cap, ()
                else:
                    # Configured rate limits alone: a tpm limit reads the prompt's count, nothing
                    # reads the worst case's cost, so no Estimate is built (a failure that needs
                    # one builds it, see _estimate). With room in the window for the count and
                    # the cap, the cap is what the estimate's would be.
                    n = tokens.count_prompt(card, request).tokens
                    if n + cap <= card.context_window:
                        return None, cap, n + cap, ()
        key = request.budget_key
        limited = not limiter.idle
        budgeted = tokens.charges(card, key) if tokens.limits else ()
        # The prompt is counted now only when something reads the count before the answer:
        # a budget, a cost ceiling, metrics that record (estimate_ratio), a token rate limit
        # the cheap bound may not fit; else only if the window is tight (see
        # TokenManager.estimate), or later, if a failure needs it.
        lazy = not (budgeted or ceiling is not None or ctx.recording
                    or (limited and (limiter.config.limits or limiter.announces_tokens(card))
                        and limiter.counts_tokens(
                            card, key, ceiling_of(bound, request) + tokens.output_cap(request, card))))
        estimate = tokens.estimate(request, card, lazy=lazy, bound=bound)
        if ctx.recording and estimate.counted and not estimate.prompt.exact:
            self.metrics.token_estimates.add(1, {"gen_ai.request.model": card.id})
        if ceiling is not None:
            tokens.check_ceiling(card, estimate, ceiling)
        store_tokens = None
        if limited:
            # Uncounted: no token limit reads the figure beyond what the bound shows fits.
            prompt = estimate.prompt.tokens if estimate.counted else ceiling_of(bound, request)
            if limiter.config.limits:
                store_tokens = prompt + estimate.max_output
            else:  # only blocks and what upstreams announced: no store, no lease
                limiter.admit_unconfigured(card, prompt + estimate.max_output)
        return estimate, estimate.max_output, store_tokens, budgeted

    async def _count_large_prompt(self, ctx: Request, card: ModelCard) -> None:
        """A large prompt whose count the attempt may read is counted in a worker thread
        first (:meth:`TokenManager.count_prompts_off_loop`); small ones cost nothing here."""
        bound = ctx.prompt_bound
        if bound is None or bound < OFF_LOOP_TOKENS:
            return
        tokens, request = self.tokens, ctx.request
        # What _begin_attempt counts for (or may: a lazy estimate under a budget's charges):
        # a tight window, a budget, a cost ceiling, configured rate limits, recording metrics.
        if (tokens.roomy_cap(request, card, bound) is None or tokens.limits or ctx.recording
                or ctx.requirements.max_request_cost is not None or self.limiter.config.limits):
            await tokens.count_prompts_off_loop((card,), request)

    def _estimate(self, ctx: Request, card: ModelCard) -> Estimate:
        """The lazy estimate :meth:`_begin_attempt` did not build (the same figures)."""
        bound = ctx.prompt_bound
        return self.tokens.estimate(ctx.request, card, lazy=True, bound=bound)

    async def _estimate_off_loop(self, ctx: Request, card: ModelCard) -> Estimate:
        """The lazy estimate a failure's charge reads, a large prompt counted in a worker
        thread first (as :meth:`_count_large_prompt` does before an answer), shielded: the
        attempt may be being cancelled. A count that runs out of its cleanup time is done
        on the event loop after all."""
        bound = ctx.prompt_bound
        if bound is not None and bound >= OFF_LOOP_TOKENS:
            await shielded(lambda: self.tokens.count_prompts_off_loop((card,), ctx.request),
                           deadline=ctx.cleanup_deadline)
        return self._estimate(ctx, card)

    async def _reserve_attempt(self, ctx: Request, card: ModelCard, estimate: Estimate | None,
                               store_tokens: int | None, budgeted: tuple[Charge, ...]
                               ) -> Reservation | None:
        """Admit the attempt in the rate-limit store (``store_tokens``) and reserve its worst
        case on the budgets that apply (``budgeted``, their charges); see
        :meth:`_begin_attempt`."""
        limiter = self.limiter
        if store_tokens is not None:
            ctx.lease = await limiter.admit(
                card, store_tokens, ctx.request.budget_key, ctx.id,
                ctx.deadline if ctx.deadline is not None else math.inf,
                ctx.timeout or self.config.timeout)
        if not budgeted:  # no budget applies: no reservation, no lease
            return None
        assert estimate is not None  # built for a budget (see _begin_attempt)
        try:
            return await self.tokens.reserve(
                card, estimate, budget_key=ctx.request.budget_key, request_id=ctx.id,
                ttl=lease_ttl(self.config.budget.reservation_ttl,
                              ctx.timeout or self.config.timeout), charges=budgeted)
        except BaseException:
            if ctx.lease is not None:  # never sent: its request, tokens and slot come back
                lease, ctx.lease = ctx.lease, None
                await limiter.release(lease)
            raise

    def _send(self, ctx: Request, card: ModelCard, max_output: int) -> AIRequest:
        """The attempt starts: the request to send is ``ctx.request`` with ``max_tokens`` set
        to the output the estimate reserved (``max_output``), so an honest upstream cannot
        produce more than was reserved."""
        self.stats.started(card.id)
        sent = ctx.request
        if sent.max_tokens != max_output:
            sent = attrs.evolve(sent, max_tokens=max_output)
        return sent

    async def _settle(self, ctx: Request, card: ModelCard, reservation: Reservation | None,
                      cost: Decimal | None, row: Callable[[tuple[str, ...]], LedgerRow], *,
                      shield: bool = True) -> None:
        """Settle an attempt's reservation. With a ``settles_with_ledger`` backend its ledger
        row (``row(scopes)``, numbered as the chain numbers the attempt) is written with it,
        and the end-of-request batch leaves it out. ``shield=False``: already shielded."""
        if reservation is None:
            return
        ledger = None
        if self._settle_rows and cost is not None:
            ledger = row(tuple([c.scope for c in reservation.charges]))
        try:
            written = await shielded(lambda: self.tokens.settle(reservation, card, cost, ledger),
                                      self._inline or not shield, ctx.cleanup_deadline)
        except BudgetStoreTimeout as exc:
            if exc.pending and ledger is not None:
                # Still running in the background: its row goes with it if it commits (and
                # must not be written twice by the end-of-request batch).
                ctx.row_written(ledger.attempt)
            raise
        # None (timed out): not known to be written, so the batch records it, as before.
        if written and ledger is not None:
            ctx.row_written(ledger.attempt)

    async def _fail_attempt(self, ctx: Request, card: ModelCard,
                            reservation: Reservation | None, exc: BaseException,
                            started: float, estimate: Estimate | None) -> None:
        """Settle what a failed attempt is known to have used (an estimate of it capped by
        ``estimate``, None: see :meth:`_begin_attempt`), or, when its request may have reached
        the provider but no answer came, what ``[budget] charge_unanswered`` charges (see
        :mod:`squirrel_models.unanswered`); release the rest. A store too slow for the cleanup
        bound leaves the reservation a lease (it expires and ``reconcile`` releases it):
        logged, and ``exc`` stays the error."""
        cut = False  # by the request's deadline
        if isinstance(exc, ModelError):
            ctx.in_flight = None
            exc.with_context(model_id=card.id, provider=card.provider)
            self.stats.finished(card.id, ok=False, latency_s=None)
        elif isinstance(exc, anyio.get_cancelled_exc_class()) and ctx.past_deadline():
            # Cut by the request's deadline: a timeout of this model (recorded as such by
            # _cut_by_deadline, which reads ctx.in_flight), not a caller's cancellation.
            cut = True
            self.stats.finished(card.id, ok=False, latency_s=None)
        else:
            ctx.in_flight = None
            self.stats.finished(card.id, ok=False, latency_s=None, counts=False)
        usage = getattr(exc, "usage", None)
        if usage is not None and not isinstance(usage, Usage):
            usage = None  # not ours to price; the reservation is released
        if ctx.lease is not None or isinstance(exc, ModelError):
            lease, ctx.lease = ctx.lease, None
            await self.limiter.failed(lease, card, exc, None if usage is None else
                                      usage.input_tokens + usage.output_tokens)
        if usage is None and may_have_reached(exc):
            # Also a stream cut before its first chunk (one that received a chunk is
            # charged what it received: see streaming.py; it never fails here).
            policy = self.config.budget.charge_unanswered
            if policy != "nothing":
                if estimate is None:
                    estimate = await self._estimate_off_loop(ctx, card)
                usage = charged_usage(policy, estimate)
        if usage is not None:
            usage = self.tokens.bounded(usage, estimate or self._estimate(ctx, card))
            if isinstance(exc, ModelError):
                exc.usage = usage
            # Charged, so in the cost metric as in the ledger (its sums are the ledger's).
            cost = (self.tokens.track_usage(card, usage) if ctx.recording
                    else self.tokens.estimate_cost(card, usage))
            number = len(ctx.records) + 1  # the chain records this failure next
            # A deadline's cut is recorded as the timeout it is (see _cut_by_deadline).
            error_type = "ProviderTimeout" if cut else type(exc).__name__
            latency = time.perf_counter() - started
            try:
                await self._settle(ctx, card, reservation, cost, lambda scopes: ledger_row(
                    ctx, number, card, "error", usage, cost, error_type, latency, scopes))
            except BudgetStoreError as failed:
                # Not committed: the attempt's ledger row must not claim it was (committed
                # spend equals the ledger's costs); the lease holds the worst case meanwhile.
                self._lease_left(reservation, "settled", failed)
            else:
                if isinstance(exc, ModelError):
                    exc.cost = cost
                elif cut:  # for _cut_by_deadline's record of it
                    ctx.in_flight = (card, started, usage, cost)
                else:
                    # The caller cancelled: no chain records the attempt, yet it was charged
                    # (by charge_unanswered, or what the provider said it used: the usage a
                    # local model's cancellation carries).
                    rec = AttemptRecord(number, card.id, card.provider, "error", error=exc,
                                        usage=usage, cost=cost, latency_s=latency)
                    ctx.records.append(rec)
                    self._report(ctx, rec, card)
        elif reservation is not None:
            try:
                await shielded(lambda: self.tokens.release(reservation), self._inline,
                               ctx.cleanup_deadline)
            except BudgetStoreError as failed:
                self._lease_left(reservation, "released", failed)

    async def _fail_and_raise(self, ctx: Request, card: ModelCard,
                              reservation: Reservation | None, exc: BaseException,
                              started: float, estimate: Estimate | None) -> NoReturn:
        """Settle a failed attempt (:meth:`_fail_attempt`) and raise its error: ``exc``
        itself, or, for an exception that is not ours, the :class:`ModelError` that stands
        in for it (never another exception type: see ``upstream.unexpected``). A
        :class:`DeadlineExceeded` from the provider is its own request's (a manager inside it:
        this request's deadline cuts by cancellation, never raises here): an attempt that did
        not answer in time, a :class:`ProviderTimeout` the chain may retry or fall back from."""
        cut = sole_cancellation(exc)
        if cut is not None and cut is not exc:
            # A group of nothing but cancellations (a trio nursery in the provider's client)
            # is the cancellation: recorded as one (a deadline's cut, charged if it may have
            # left), where it went unrecorded, and raised as one.
            await self._fail_attempt(ctx, card, reservation, cut, started, estimate)
            raise cut
        if isinstance(exc, ModelError):
            checked_error(exc, card.id, card.provider)
        elif isinstance(exc, DeadlineExceeded):
            late = ProviderTimeout(f"the provider's own request did not finish within its "
                                   f"{exc.timeout:g}s deadline", model_id=card.id, provider=card.provider)
            late.__cause__ = exc  # on the record too, before it is raised
            await self._fail_attempt(ctx, card, reservation, late, started, estimate)
            raise late from exc
        if upstream.foreign(exc):
            typed = upstream.unexpected(exc, model_id=card.id, provider=card.provider)
            await self._fail_attempt(ctx, card, reservation, typed, started, estimate)
            upstream.reraise(typed)
        await self._fail_attempt(ctx, card, reservation, exc, started, estimate)
        raise exc

    @staticmethod
    def _lease_left(reservation: Reservation | None, what: str, exc: BudgetStoreError) -> None:
        if reservation is None:
            return
        if isinstance(exc, BudgetStoreTimeout) and exc.pending:
            log.warning("reservation %s not %s in time (%s): the call goes on in the "
                        "background; should it fail, the reservation stays held until it "
                        "expires at %.0f and reconcile releases it", reservation.id, what, exc,
                        reservation.expires_at)
        else:
            log.warning("reservation %s not %s (%s): it stays held until it expires at %.0f "
                        "and reconcile releases it", reservation.id, what, exc,
                        reservation.expires_at)

    async def _attempt(self, ctx: Request, card: ModelCard, number: int) -> Result:
        bound = ctx.prompt_bound
        if bound is not None and bound >= OFF_LOOP_TOKENS:  # small: no coroutine made
            await self._count_large_prompt(ctx, card)
        estimate, max_output, store_tokens, budgeted = self._begin_attempt(ctx, card)
        reservation = None
        if budgeted:
            reservation = await self._reserve_attempt(ctx, card, estimate, store_tokens, budgeted)
        elif store_tokens is not None:  # rate limits alone: the limiter's one coroutine
            ctx.lease = await self.limiter.admit(
                card, store_tokens, ctx.request.budget_key, ctx.id,
                ctx.deadline if ctx.deadline is not None else math.inf,
                ctx.timeout or self.config.timeout)
        sent = self._send(ctx, card, max_output)
        t0 = time.perf_counter()
        ctx.in_flight = (card, t0)
        try:
            provider = self._provider_of(card)
            limit = self.config.attempt_timeout
            if limit is None:
                resp = await provider.complete(card, sent)
            else:
                with anyio.move_on_after(limit) as scope:
                    resp = await provider.complete(card, sent)
                if scope.cancelled_caught:
                    raise ProviderTimeout(f"no answer within attempt_timeout={limit:g}s")
            problem = answer_problem(resp)
            if problem is not None:  # (a few type comparisons for a well-formed answer)
                raise malformed(problem, card.provider, card.id, resp)
            if resp.choices or sent.n != 1:
                _check_choices(resp, sent.n)
        except BaseException as exc:
            await self._fail_and_raise(ctx, card, reservation, exc, t0, estimate)
        ctx.in_flight = None
        usage = resp.usage
        if not possible(usage, resp.text, resp.tool_calls):  # (no closure for the usual case)
            usage = self.tokens.credible(usage, card, estimate or self._estimate(ctx, card),
                                         resp.text, resp.tool_calls)
        if ctx.lease is not None:
            lease, ctx.lease = ctx.lease, None
            await self.limiter.settle(lease, usage.input_tokens + usage.output_tokens)
        if resp.rate_limits is not None:
            self.limiter.observe(card, resp.rate_limits)
        cost = (self.tokens.track_usage(card, usage) if ctx.recording
                else self.tokens.estimate_cost(card, usage))
        if ctx.recording and estimate is not None and estimate.counted:
            self.metrics.accuracy(estimate.prompt, usage, model=card.id)
        latency = time.perf_counter() - t0
        if reservation is not None:
            await self._settle_answer(ctx, card, reservation, cost, usage, latency)
        self.stats.finished(card.id, ok=True, latency_s=latency)
        return Result(resp, usage, cost)

    async def _settle_answer(self, ctx: Request, card: ModelCard, reservation: Reservation,
                             cost: Decimal | None, usage: Usage, latency: float) -> None:
        """Settle an answered attempt's reservation (apart from :meth:`_attempt`, whose every
        call would otherwise make this closure's cells)."""
        try:
            await self._settle(ctx, card, reservation, cost, lambda scopes: ledger_row(
                ctx, len(ctx.records) + 1, card, "ok", usage, cost, None, latency, scopes))
        except BudgetStoreError as exc:
            self._lease_left(reservation, "settled", exc)
            raise

    def _cut_by_deadline(self, ctx: Request, timeout: float) -> None:
        """The request's deadline cut an upstream call short (no answer, or no first chunk):
        that attempt is a timeout. Record it (ledger row, metrics, observers), count it as a
        failure against the model (breaker and stats), so DeadlineExceeded counts it too."""
        if ctx.in_flight is None:
            return
        flight, ctx.in_flight = ctx.in_flight, None
        card, started = flight[0], flight[1]
        err = ProviderTimeout(f"cut by the request's {timeout:g}s deadline",
                              model_id=card.id, provider=card.provider)
        if len(flight) == 4:  # what _fail_attempt charged it (see charge_unanswered)
            err.usage, err.cost = flight[2], flight[3]
        self.breakers.failure(card.id, err)
        rec = AttemptRecord(len(ctx.records) + 1, card.id, card.provider, "error", error=err,
                            usage=err.usage, latency_s=time.perf_counter() - started)
        ctx.records.append(rec)
        self._report(ctx, rec, card)

    async def _open_stream(self, ctx: Request, card: ModelCard) -> Stream:
        bound = ctx.prompt_bound
        if bound is not None and bound >= OFF_LOOP_TOKENS:
            await self._count_large_prompt(ctx, card)
        estimate, max_output, store_tokens, budgeted = self._begin_attempt(ctx, card)
        reservation = None
        if budgeted:
            reservation = await self._reserve_attempt(ctx, card, estimate, store_tokens, budgeted)
        elif store_tokens is not None:  # rate limits alone: the limiter's one coroutine
            ctx.lease = await self.limiter.admit(
                card, store_tokens, ctx.request.budget_key, ctx.id,
                ctx.deadline if ctx.deadline is not None else math.inf,
                ctx.timeout or self.config.timeout)
        sent = self._send(ctx, card, max_output)
        t0 = time.perf_counter()
        ctx.in_flight = (card, t0)
        it: AsyncIterator[StreamChunk] | None = None
        try:
            it = self._provider_of(card).stream(card, sent).__aiter__()
            first: StreamChunk | None = None
            ended = False
            limit = self.config.attempt_timeout
            with anyio.move_on_after(limit if limit is not None else float("inf")) as scope:
                try:
                    first = await it.__anext__()
                except StopAsyncIteration:
                    ended = True
            if scope.cancelled_caught:
                raise ProviderTimeout(f"no first chunk within attempt_timeout={limit:g}s")
            if not ended and (problem := chunk_problem(first)) is not None:
                raise malformed(problem, card.provider, card.id, first)
        except BaseException as exc:
            if it is not None:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await close_within(aclose, ctx.cleanup_deadline)
            if isinstance(exc, MidStreamError):
                checked_error(exc, card.id, card.provider)
                # Broken before we saw a chunk: nothing reached the caller, so it may fall back.
                plain = ProviderConnectionError(f"stream broke before its first chunk: {exc}",
                                                model_id=card.id, provider=card.provider)
                plain.usage = exc.usage
                await self._fail_attempt(ctx, card, reservation, plain, t0, estimate)
                raise plain from exc
            await self._fail_and_raise(ctx, card, reservation, exc, t0, estimate)
        ctx.in_flight = None
        return Stream(card, it, first, reservation, estimate or self._estimate(ctx, card), t0)



def _check_choices(resp: ProviderResponse, n: int) -> None:
    """A provider asked for ``n`` answers returns that many (``choices``; one answer may
    leave it empty), else the answer is malformed (what it used is still charged)."""
    got = len(resp.choices) or 1
    if got != n or any(not isinstance(c, Choice) or c.index != i for i, c in enumerate(resp.choices)):
        raise MalformedResponse(f"asked for n={n} answer(s), got {got} (or misnumbered)",
                                usage=resp.usage)
