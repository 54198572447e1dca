"""``ModelManager``: the front door. Selects, calls, falls back, counts, charges and reports.

One request::

    rank candidates -> for each attempt (bounded by max_attempts and the deadline):
        estimate worst case -> per-request ceiling -> reserve budget -> call provider
        -> settle actual cost (or release / settle what was received on failure)
    -> AIResponse(text, usage, cost, model, decision, attempts)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import attrs

from .assembly import Assembly, Routing, restart_needed
from .attempt import Request, Result, Stream, new_request_id, shielded
from .attempts import Attempts
from .budget import BudgetBackend, LedgerBackend, records_pending, settles_with_ledger
from .config import MAX_NUMBER, Config, lease_needed, load_config, load_toml
from .deadline import AnyioDeadline, now, running_loop
from .deadline import deadline as deadline_of
from .errors import (
    BudgetStoreError,
    BudgetStoreTimeout,
    ConfigError,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    SquirrelError,
)
from .fallback import CircuitBreakers
from .metrics import NO_SPAN, Metrics
from .plugins import PluginManager
from .providers import Provider
from .ratefit import RateFit
from .responses import new_response
from .scoring import RequestShape, new_shape
from .secrets import RedactingFilter, guarded
from .selection import DISABLED, Decision, with_needs
from .sharedbreakers import SharedBreakers, shared_breakers
from .stats import StatsRegistry
from .streaming import ResponseStream
from .telemetry import Telemetry
from .tokens import OFF_LOOP_TOKENS, Recount, prompt_bounds
from .types import (
    AIRequest,
    AIResponse,
    ModelCard,
    ModelRequirements,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["ModelManager", "ResponseStream"]

log = logging.getLogger("squirrel_models")
log.addFilter(RedactingFilter())


class ModelManager(Assembly, Attempts):
    """Routes requests to models. Build from a :class:`Config`, a mapping or a TOML file.

    Use as an async context manager (``async with ModelManager(cfg) as mm:``) so providers'
    connections, loaded models and the budget backend are closed; ``start()`` runs on first
    use if you do not.
    """

    @guarded
    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        plugins: PluginManager | None = None,
        budget_backend: BudgetBackend | None = None,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = load_config(config) if config is not None else Config()
        self.plugins = plugins or (PluginManager(strict=True) if self.config.strict_plugins
                                   else PluginManager())
        # [telemetry]: an SDK meter provider with the configured exporters, unless the caller
        # passed a meter provider of its own.
        self.telemetry: Telemetry | None = None
        if meter_provider is None and self.config.telemetry.enabled:
            self.telemetry = Telemetry(self.config.telemetry)
            meter_provider = self.telemetry.meter_provider
        self.metrics = Metrics(meter_provider, tracer_provider)
        self.stats = StatsRegistry()
        self.breakers = CircuitBreakers(self.config.circuit_breaker)
        self._shared: SharedBreakers | None = None
        self._providers: dict[str, Provider] = {}
        self._started = False
        self._closed = False
        self._start_failed = False
        self._start_lock: anyio.Lock | None = None
        self._reload_lock: anyio.Lock | None = None
        self._source: Path | None = None
        self._retired: list[Provider] = []  # replaced by reload(); closed with the manager
        try:
            self._build(budget_backend)
            # [circuit_breaker] shared: cooldowns shared among instances (sharedbreakers.py)
            self._shared = shared_breakers(self.config, self.plugins, self.breakers)
        except BaseException:
            if self.telemetry is not None:
                self.telemetry.shutdown()
            raise

    @classmethod
    def from_toml(cls, path: str | Path, **kw: Any) -> ModelManager:
        manager = cls(load_toml(path), **kw)
        manager._source = Path(path)  # what reload() re-reads
        return manager

    # --- reload --------------------------------------------------------------------------

    @guarded
    async def reload(self, config: Config | Mapping[str, Any] | str | Path | None = None) -> None:
        """Apply a changed configuration without a restart.

        ``config`` is a :class:`Config`, a mapping or a TOML path; None re-reads the file the
        manager was built from (:meth:`from_toml`). The new configuration is validated in full
        first: a bad one changes nothing and raises :class:`ConfigError` naming the field.

        Applied live: model overrides (``[[providers.models]]``, ``enabled`` included: the
        providers whose overrides changed are rebuilt and list their models again), scoring,
        requirements, fallback, circuit breaker, budget limits and ``allow_unpriced``, rate
        limits (the counts so far are kept), timeouts. Refused with a :class:`ConfigError`
        saying a restart is needed: the provider list and each provider's ``type``,
        ``options``, ``discover`` and ``enabled``; the budget ``backend`` and its ``options``;
        the rate-limit ``store`` and its ``options``; ``[telemetry]``; ``strict_plugins``;
        ``base_dir``.
        Requests already running keep the decision and providers they started with.
        """
        if config is None:
            if self._source is None:
                raise ConfigError("this manager was not built from a file; pass the new "
                                  "configuration to reload(config)")
            config = self._source
        new = load_toml(config) if isinstance(config, str | Path) else load_config(config)
        await self.start()
        if self._reload_lock is None:
            self._reload_lock = anyio.Lock()
        async with self._reload_lock:
            await self._reload(new)

    async def _reload(self, new: Config) -> None:
        old = self.config
        if new.base_dir is None:  # a mapping: relative paths keep meaning what they meant
            new = attrs.evolve(new, base_dir=old.base_dir)
        restart_needed(old, new)
        before = {pc.name: pc.models for pc in old.providers}
        changed = {pc.name for pc in new.providers if pc.enabled and pc.models != before[pc.name]}
        fresh = self._make_providers(new, only=changed)
        try:
            routing = self._routing(new, self.budget_backend)
            cards = {mid: card for mid, card in self.selector.models.items()
                     if card.provider not in changed}
            for name in sorted(fresh):
                await self._list(new, name, fresh[name], cards)
            self._check_names(new, cards)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for provider in fresh.values():
                    try:
                        await provider.aclose()
                    except Exception as exc:  # the validation error is the one to report
                        log.debug("closing a provider built for a refused reload: %s", exc)
            raise
        routing.selector.set_models(cards.values())
        # Requests in flight hold their decision and may still call a replaced provider:
        # it is closed with the manager, not now.
        self._retired.extend(self._providers[name] for name in fresh)
        self._providers.update(fresh)
        self.breakers.config = new.circuit_breaker
        self.limiter.reconfigure(new.rate_limits, self._lease_ttl(new),
                                 new.circuit_breaker.max_cooldown)
        self.config = new
        self._install(routing)
        log.info("configuration reloaded (%d model(s), %d disabled)", len(cards),
                 len(routing.selector.disabled & set(cards)))

    # --- construction --------------------------------------------------------------------

    def _build(self, backend: BudgetBackend | None) -> None:
        self._providers.update(self._make_providers(self.config))
        self.limiter = self._make_limiter(self.config)
        self._install(self._routing(self.config, backend))

    def _install(self, routing: Routing) -> None:
        self.selector = routing.selector
        self.fallback = routing.fallback
        backend = routing.backend
        self.budget_backend: BudgetBackend = backend
        # Checked once: a runtime Protocol isinstance costs more than a fast request's ledger.
        self._ledger_backend = isinstance(backend, LedgerBackend)
        # The backend writes an attempt's ledger row in its settlement's transaction, so no
        # crash can leave spend committed without its row (see budget.py).
        self._settle_rows = self._ledger_backend and settles_with_ledger(backend)
        self._inline = getattr(backend, "nonblocking", False) is True
        # A backend that builds ledger rows when they are read takes them unbuilt.
        self._record_pending = records_pending(backend)
        self.tokens = routing.tokens
        self.spreader = routing.spreader
        self._observers = self.plugins.has_observers()
        self._deadline_construct()

    def _deadline_construct(self) -> None:
        """Whether a request's deadline may be a plain asyncio timer (see deadline.py):
        nothing that runs inside it shields itself from cancellation or reads the deadline.
        The budget backend and the rate-limit store never suspend, and every provider says
        its calls hold no cancel shield (``cancel_safe``); else an anyio cancel scope."""
        self._native_deadline = (
            self._inline
            and (not self.config.rate_limits.limits or self.limiter.nonblocking)
            and all(getattr(p, "cancel_safe", False) is True for p in self._providers.values()))

    # --- lifecycle -----------------------------------------------------------------------

    @guarded
    async def start(self) -> None:
        """Discover every provider's models and reconcile expired budget leases. Idempotent.

        A start-up that fails closes whatever was opened (client sessions, loaded models, the
        budget store) before its error is raised; the manager is then closed."""
        if self._started:
            return
        try:
            await self._start_once()
        except BudgetStoreTimeout:
            raise  # the store was slow (locked) for now: nothing to close, a later start retries
        except Exception:
            if not self._closed:
                self._start_failed = True
                await self._close_quietly()
            raise

    async def _close_quietly(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.aclose()
            except Exception as exc:  # the start-up error is the one to report
                log.debug("closing after a failed start-up: %s: %s", type(exc).__name__, exc)

    async def _start_once(self) -> None:
        if self._start_lock is None:
            self._start_lock = anyio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise SquirrelError("this ModelManager is closed"
                                    + (" (its start-up failed)" if self._start_failed else ""))
            cards: dict[str, ModelCard] = dict(self.selector.models)
            for name, provider in self._providers.items():
                await self._list(self.config, name, provider, cards)
            self.selector.set_models(cards.values())
            self._check_names()  # a failed start closes the providers (start())
            expired = await self.budget_backend.reconcile()
            if expired:
                log.warning("released %d expired budget reservation(s) at start-up", expired)
            if self.telemetry is not None:
                self.telemetry.start()  # serve /metrics once the manager can route
            self._started = True

    @guarded
    async def aclose(self) -> None:
        """Close every provider and the budget backend."""
        if self._closed:
            return
        self._closed = True
        # Not started any more: a later request, reload or ranking goes through start(),
        # which refuses ("this ModelManager is closed"), rather than reaching the closed
        # providers (a retried, misleading "provider is closed" per attempt).
        self._started = False
        errors: list[BaseException] = []
        for provider in [*self._providers.values(), *self._retired]:
            try:
                await provider.aclose()
            except Exception as exc:  # close the rest regardless
                errors.append(exc)
        await self.budget_backend.aclose()
        if self._shared is not None:
            await self._shared.aclose()
        await self.limiter.aclose()
        if self.telemetry is not None:  # the last OTLP export is a blocking HTTP call
            await anyio.to_thread.run_sync(self.telemetry.shutdown)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> ModelManager:
        try:
            await self.start()
        except BaseException:  # cancelled too: __aexit__ will not run
            await self._close_quietly()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- models --------------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, ModelCard]:
        return self.selector.models

    @property
    def disabled(self) -> frozenset[str]:
        """Ids of the models switched off with ``enabled = false``: listed in :attr:`models`
        but left out of every ranking (reason ``"disabled in configuration"``)."""
        return self.selector.disabled

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self._providers

    def register_model(self, card: ModelCard, provider: Provider | None = None) -> None:
        """Add or replace a model. ``provider`` serves it (registered under ``card.provider``)."""
        if provider is not None:
            self._providers.setdefault(card.provider, provider)
            self._deadline_construct()
        elif card.provider not in self._providers:
            raise ModelNotFound(f"{card.id} (no provider named {card.provider!r})")
        self.selector.add(card)

    def remove_model(self, model_id: str) -> ModelCard:
        card = self.selector.remove(model_id)
        if card is None:
            raise ModelNotFound(model_id)
        self.stats.forget(model_id)
        return card

    def _shape(self, request: AIRequest | None) -> RequestShape:
        if request is None:
            return RequestShape()
        upper, lower = prompt_bounds(request)
        return new_shape(upper, request.max_tokens, False,
                         Recount(self.tokens.hook_count, request), lower, request)

    def _require_started(self, what: str) -> None:
        """``rank`` and ``get_model`` are synchronous and cannot discover models themselves:
        before ``start()`` the configured providers' models are not known yet, and a ranking
        of none would read as "no model meets the requirements"."""
        if self._closed:
            raise SquirrelError("this ModelManager is closed")
        if not self._started and any(pc.enabled for pc in self.config.providers):
            raise SquirrelError(
                f"{what}() before start(): the configured providers' models are not known yet; "
                f"call `await manager.start()` first, or use `async with ModelManager(...) as "
                f"manager:` (complete() and stream() start the manager themselves)")

    def rank(self, requirements: ModelRequirements | None = None,
             request: AIRequest | None = None) -> Decision:
        """Every model meeting ``requirements`` (sized for ``request``), best first, and why.

        Needs the manager started (``await start()`` or ``async with``) when the
        configuration declares providers; raises :class:`SquirrelError` otherwise.
        """
        self._require_started("rank")
        return self.selector.rank(with_needs(requirements or self.config.requirements, request),
                                  self._shape(request))

    def get_model(self, requirements: ModelRequirements | None = None,
                  request: AIRequest | None = None) -> ModelCard:
        """The model a request with ``requirements`` would go to first (see :meth:`rank`)."""
        self._require_started("get_model")
        return self.selector.select(with_needs(requirements or self.config.requirements, request),
                                    self._shape(request))

    # --- requests ------------------------------------------------------------------------

    async def _prepare(self, request: AIRequest, requirements: ModelRequirements | None,
                       end: float = math.inf, timeout: float = math.inf, *,
                       streaming: bool = False) -> Request:
        """Start the manager if needed, rank the candidates and set up the request's state
        (:class:`Request`); raises when no model can take the request."""
        if not isinstance(request, AIRequest):
            raise InvalidRequest(f"expected an AIRequest, got {type(request).__name__}",
                                 field="request")
        if not self._started:
            await self._start_within(end, timeout)
        if self._shared is not None and self._shared.due():
            await self._shared.sync(end)
        req = with_needs(requirements or self.config.requirements, request)
        shape = self._shape(request)
        if shape.prompt_tokens >= OFF_LOOP_TOKENS:
            await self._count_for_ranking(request, req, shape, end, timeout)
        decision = self.selector.rank(req, shape)
        if not decision.has_candidates() and not self.limiter.idle:  # at rate limits: wait, or say so
            decision = await self.limiter.wait_for_room(
                decision, lambda: self.selector.rank(req, shape), end)
        return self._request(request, req, shape, decision, end, timeout, streaming)

    def _prepared(self, request: AIRequest, requirements: ModelRequirements | None,
                  end: float, timeout: float, streaming: bool = False) -> Request | None:
        """What :meth:`_prepare` returns, without an await (no coroutine) when none is needed:
        the manager started, no shared breakers due, a candidate ranked or no rate limit to
        wait for. None: call :meth:`_prepare`."""
        if not self._started or self._shared is not None or type(request) is not AIRequest:
            return None
        req = with_needs(requirements or self.config.requirements, request)
        shape = self._shape(request)
        if shape.prompt_tokens >= OFF_LOOP_TOKENS:
            return None  # counted off the event loop first: _prepare
        decision = self.selector.rank(req, shape)
        if decision.has_candidates():
            return self._request(request, req, shape, decision, end, timeout, streaming, True)
        if not self.limiter.idle:
            return None  # rare: _prepare ranks again, and may wait for room
        return self._request(request, req, shape, decision, end, timeout, streaming)

    def _request(self, request: AIRequest, req: ModelRequirements, shape: RequestShape,
                 decision: Decision, end: float, timeout: float, streaming: bool,
                 ranked: bool = False) -> Request:
        """The request's state; ``ranked``: the decision is known to have candidates (load
        spreading reorders them, never leaves one out)."""
        if self.spreader is not None:  # equivalent candidates share the load
            decision = self.spreader.apply(decision)
        if not ranked and not decision.has_candidates():  # builds no Candidate, sorts nothing
            self._refuse(decision, req, request)
        return Request(self, new_request_id(), request, req, decision, shape.prompt_tokens, end,
                       timeout, streaming, self.metrics.recording())

    def _refuse(self, decision: Decision, req: ModelRequirements,
                request: AIRequest) -> NoReturn:
        """Raise why no model can take the request (apart from :meth:`_request`: its
        comprehensions would make closure cells on every request)."""
        from .errors import CapabilityNotSupported, UnpricedModel
        from .selection import UNPRICED

        unpriced = [mid for mid, why in decision.excluded.items() if why == UNPRICED]
        if unpriced:  # it meets everything else: the price is what is missing
            raise UnpricedModel(unpriced[0], excluded=decision.excluded)
        fit = self.selector.unfit
        if isinstance(fit, RateFit):  # a limit no wait can make room in: a smaller request fits
            small = fit.refusal(decision.excluded, self.selector.models, request)
            if small is not None:
                self.limiter.refused_now(small)  # counted once, as an attempt's refusal was
                raise small
        off = sorted(mid for mid, why in decision.excluded.items() if why == DISABLED)
        if off and req.models is not None and set(req.models) <= set(off):
            raise CapabilityNotSupported(
                f"{', '.join(off)} {'is' if len(off) == 1 else 'are'} disabled in "
                f"configuration (enabled = false in its [[providers.models]] entry)",
                excluded=dict(decision.excluded))
        raise CapabilityNotSupported(
            f"no model meets the requirements ({len(self.models)} registered{self._why_none()})",
            excluded=dict(decision.excluded))

    def _why_none(self) -> str:
        """Why no model is registered, when none is: "0 registered" alone read as a bug."""
        if self.models:
            return ""
        providers = self.config.providers
        if not providers:
            return ": the configuration has no [[providers]] entry"
        if not any(p.enabled for p in providers):
            return ": every [[providers]] entry has enabled = false"
        quiet = [f"providers[{i}]" for i, p in enumerate(providers)
                 if p.enabled and not p.discover and not p.models]
        if quiet:
            return f": {', '.join(quiet[:3])} set discover = false and list no [[providers.models]]"
        return ": the providers listed none"

    async def _count_for_ranking(self, request: AIRequest, req: ModelRequirements, shape: RequestShape,
                                 end: float, timeout: float) -> None:
        """A large prompt is counted in a worker thread, within the request's deadline, for
        the models whose window its bound does not fit: the ranking then reads the counts
        without holding the event loop (see ``tokens.OFF_LOOP_TOKENS``)."""
        with anyio.CancelScope(deadline=end) as scope:
            await self.tokens.count_prompts_off_loop(self.selector.recounts(req, shape), request)
        if scope.cancelled_caught:
            raise DeadlineExceeded(timeout=timeout)

    async def _start_within(self, end: float, timeout: float) -> None:
        """``start()`` on a request's first use, within its deadline ``end`` (anyio's clock):
        discovery and the budget store's ``reconcile`` (a locked store) count against it."""
        with anyio.CancelScope(deadline=end) as scope:
            try:
                await self.start()
            except BudgetStoreTimeout as exc:
                if not exc.by_deadline:
                    raise
                raise DeadlineExceeded(timeout=timeout) from exc
        if scope.cancelled_caught:
            raise DeadlineExceeded(timeout=timeout)

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.config.timeout
        # a bool is no number of seconds (True ran as 1 s); the bound is the configuration's
        if isinstance(timeout, bool) or not (isinstance(timeout, int | float) and 0 < timeout <= MAX_NUMBER):
            raise InvalidRequest(f"must be a finite number of seconds > 0, got {timeout!r}"[:200],
                                 field="timeout")
        for field, ttl, what in (
                ("budget.reservation_ttl", self.config.budget.reservation_ttl,
                 "budget reservations"),
                ("rate_limits.lease_ttl", self.config.rate_limits.lease_ttl, "rate-limit leases")):
            if ttl is not None and lease_needed(timeout) > ttl:
                # Leases last that long: one that expired mid-request would hand its room
                # (budget headroom, a concurrency slot) to other requests while this one may
                # still use it.
                raise InvalidRequest(f"{timeout:g} s is longer than {what} live ({field} = "
                                     f"{ttl:g} s, less {lease_needed(0):g} s for cleanup); "
                                     f"raise {field.partition('.')[2]}", field="timeout")
        return float(timeout)

    async def complete(self, request: AIRequest, requirements: ModelRequirements | None = None,
                       *, timeout: float | None = None) -> AIResponse:
        """Route ``request`` and return the answer. Raises a :class:`SquirrelError` subclass:
        :class:`DeadlineExceeded` after ``timeout`` (default: the config's), the error itself
        when one attempt was made, :class:`FallbackExhausted` when several were."""
        timeout = self.config.timeout if timeout is None else self._timeout(timeout)
        deadline = time.monotonic() + timeout
        loop = running_loop()  # asked once: the deadline's clock and its construct
        end = (loop.time() if loop is not None else anyio.current_time()) + timeout
        ctx = (self._prepared(request, requirements, end, timeout)
               or await self._prepare(request, requirements, end, timeout))
        response: AIResponse | None = None
        error: BaseException | None = None
        span = self.metrics.tracer.start_span("chat")
        try:
            # The cheapest construct that cuts the attempts at the deadline (deadline.py).
            with deadline_of(end, self._native_deadline, loop) as cut:
                result = await self.fallback.run_with(ctx.decision.ranked, ctx,
                                                      deadline=deadline)
            if cut.expired:
                raise TimeoutError
            assert isinstance(result, Result)
            attempts = tuple(ctx.records)
            model = attempts[-1].model_id
            resp = result.response
            # The request's own decision (nothing else holds it) records the answer.
            response = new_response(resp.text, model, result.usage, result.cost,
                                  ctx.decision._answer(model, attempts), attempts,
                                  resp.finish_reason, ctx.id, resp.tool_calls,
                                  resp.choices if len(resp.choices) > 1 else ())
            if span is not NO_SPAN:
                span.set_attribute("gen_ai.request.model", model)
            return response
        except TimeoutError as exc:
            if not (cut.expired or ctx.past_deadline()):
                # Not this request's deadline: a TimeoutError from inside (a nested manager's
                # DeadlineExceeded, the stream's body) stays what it is, never a false one.
                error = exc
                raise
            self._cut_by_deadline(ctx, timeout)
            error = DeadlineExceeded(timeout=timeout, attempts=ctx.records)
            raise error from exc
        except BudgetStoreError as exc:
            error = self._store_failed(exc, timeout, ctx)
            raise error from error.__cause__
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not NO_SPAN:
                span.set_attribute("squirrel.attempts", len(ctx.records))
                if error is not None:
                    span.set_attribute("error.type", type(error).__name__)
                span.end()
            if error is None and not self._observers and self._shared is None \
                    and self._record_pending is not None:
                # What _finish does for an answer when rows are recorded unbuilt: no await.
                if ctx.ledger:
                    self._record_pending(ctx.ledger)
            else:
                await self._finish(ctx, response, error, timeout)

    @asynccontextmanager
    async def stream(self, request: AIRequest, requirements: ModelRequirements | None = None,
                     *, timeout: float | None = None) -> AsyncIterator[ResponseStream]:
        """Stream the answer: ``async with mm.stream(req) as s: async for chunk in s: ...``.

        Failures before the first chunk fall back like :meth:`complete`; after it the request
        is never replayed and :class:`MidStreamError` carries the partial text. The tokens
        received are charged whatever happens (a stream cut before its first chunk after its
        request left: what ``[budget] charge_unanswered`` charges); ``s.response`` is set once
        the stream ends.
        """
        if isinstance(request, AIRequest) and request.n != 1:
            raise InvalidRequest(f"a stream carries one answer: n must be 1, got {request.n} "
                                 "(use complete() for several)", field="n")
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        end = now() + timeout
        ctx = await self._prepare(request, requirements, end, timeout, streaming=True)
        rs: ResponseStream | None = None
        error: BaseException | None = None
        span = self.metrics.tracer.start_span("chat")
        try:
            # The caller's body runs inside: an anyio cancel scope, whatever the backend.
            with AnyioDeadline(end) as cut:
                start = await self.fallback.run_with(ctx.decision.ranked, ctx,
                                                     deadline=deadline, defer_success=True)
                assert isinstance(start, Stream)
                rs = ResponseStream(self, ctx, start)
                span.set_attribute("gen_ai.request.model", start.card.id)
                try:
                    yield rs
                finally:
                    await shielded(rs._close, deadline=ctx.cleanup_deadline)
                    if rs._error is not None:
                        error = rs._error
                if rs._store_error is not None:  # the body ended well; its settlement did not
                    raise rs._store_error
            if cut.expired:
                raise TimeoutError
        except TimeoutError as exc:
            if not (cut.expired or ctx.past_deadline()):
                # Not this request's deadline: a TimeoutError from inside (a nested manager's
                # DeadlineExceeded, the stream's body) stays what it is, never a false one.
                error = exc
                raise
            self._cut_by_deadline(ctx, timeout)
            error = DeadlineExceeded(timeout=timeout, attempts=ctx.records)
            raise error from exc
        except BudgetStoreError as exc:
            error = self._store_failed(exc, timeout, ctx)
            raise error from error.__cause__
        except BaseException as exc:
            error = error or exc
            raise
        finally:
            span.set_attribute("squirrel.attempts", len(ctx.records))
            if error is not None:
                span.set_attribute("error.type", type(error).__name__)
            span.end()
            await self._finish(ctx, rs.response if rs is not None else None, error, timeout)
