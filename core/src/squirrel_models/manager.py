"""``ModelManager``: the front door. Selects, calls, falls back, counts, charges and reports.

One request::

    rank candidates -> for each attempt (bounded by max_attempts and the deadline):
        estimate worst case -> per-request ceiling -> reserve budget -> call provider
        -> settle actual cost (or release / settle what was received on failure)
    -> AIResponse(text, usage, cost, model, decision, attempts)
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .attempt import Request, Result, Stream, close_within, ledger_row, shielded
from .budget import BudgetBackend, LedgerBackend, LedgerRow, Reservation, settles_with_ledger
from .config import Config, lease_needed, lease_ttl, load_config, load_toml, structure_options
from .errors import (
    BudgetStoreError,
    BudgetStoreTimeout,
    ConfigError,
    DeadlineExceeded,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ModelNotFound,
    PluginError,
    ProviderConnectionError,
    ProviderTimeout,
    SquirrelError,
)
from .events import AttemptEvent, RequestEvent
from .fallback import CircuitBreakers, FallbackChain
from .limiter import RateLimiter
from .metrics import Metrics
from .plugins import PluginManager
from .providers import Provider, ProviderSpec, live_stats
from .scoring import RequestShape, policy_weights
from .secrets import RedactingFilter, guarded, sanitize
from .selection import DISABLED, Decision, ModelSelector, rules_from, with_needs
from .sharedbreakers import SharedBreakers, shared_breakers
from .spread import Spreader
from .stats import StatsRegistry
from .streaming import ResponseStream
from .telemetry import Telemetry
from .tokens import Estimate, TokenManager
from .types import (
    AIRequest,
    AIResponse,
    AttemptRecord,
    Choice,
    ModelCard,
    ModelRequirements,
    ProviderResponse,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["ModelManager", "ResponseStream"]

log = logging.getLogger("squirrel_models")
log.addFilter(RedactingFilter())


class ModelManager:
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
        _restart_needed(old, new)
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
        self.limiter.reconfigure(new.rate_limits, self._lease_ttl(new))
        self.config = new
        self._install(routing)
        log.info("configuration reloaded (%d model(s), %d disabled)", len(cards),
                 len(routing.selector.disabled & set(cards)))

    # --- construction --------------------------------------------------------------------

    def _build(self, backend: BudgetBackend | None) -> None:
        self._providers.update(self._make_providers(self.config))
        self.limiter = self._make_limiter(self.config)
        self._install(self._routing(self.config, backend))

    def _make_limiter(self, cfg: Config) -> RateLimiter:
        """The rate limiter and its store (``[rate_limits]``; see limiter.py)."""
        rl = cfg.rate_limits
        stores = self.plugins.ratelimit_stores()
        st = stores.get(rl.store)
        if st is None:
            raise ConfigError(f"unknown rate-limit store {rl.store!r}; installed: "
                              f"{', '.join(sorted(stores))}", field="rate_limits.store")
        opts = structure_options(rl.options, st.options_type, field="rate_limits.options",
                                 base_dir=cfg.base_dir)
        return RateLimiter(rl, st.factory(opts), self._lease_ttl(cfg))

    @staticmethod
    def _lease_ttl(cfg: Config) -> float:
        return cfg.rate_limits.lease_ttl or lease_ttl(cfg.budget.reservation_ttl, cfg.timeout)

    def _make_providers(self, cfg: Config, only: Collection[str] | None = None
                        ) -> dict[str, Provider]:
        """One provider per enabled ``[[providers]]`` entry (those named in ``only``)."""
        made: dict[str, Provider] = {}
        self._make_into(made, cfg, only)
        return made

    def _make_into(self, made: dict[str, Provider], cfg: Config,
                   only: Collection[str] | None) -> None:
        types = self.plugins.provider_types()
        for i, pc in enumerate(cfg.providers):
            if not pc.enabled or (only is not None and pc.name not in only):
                continue
            ptype = types.get(pc.type)
            if ptype is None:
                raise ConfigError(
                    f"unknown provider type {pc.type!r}; installed: "
                    f"{', '.join(sorted(types)) or 'none'}", field=f"providers[{i}].type")
            options = structure_options(pc.options, ptype.options_type,
                                        field=f"providers[{i}].options", base_dir=cfg.base_dir)
            spec = ProviderSpec(pc.name, pc.type, options, pc.models, pc.discover, path=f"providers[{i}]")
            try:
                made[pc.name] = ptype.factory(spec)
            except Exception as exc:
                mapped = _provider_error(exc, i, pc.name, f"provider {pc.type!r} could not be created")
                if mapped is None:
                    raise
                raise mapped from exc

    def _routing(self, cfg: Config, backend: BudgetBackend | None) -> _Routing:
        """Selector, fallback chain, budget backend and token manager for ``cfg`` (nothing on
        ``self`` changes, so a reload can validate all of it before applying any)."""
        rules = self.plugins.scoring_rules()
        unknown = set(cfg.scoring.weights) - set(rules)
        if unknown:
            raise ConfigError(f"unknown scoring rule {', '.join(sorted(unknown))}; available: "
                              f"{', '.join(sorted(rules))}", field="scoring.weights")
        weights, unnamed = policy_weights(cfg.scoring.policy, rules.values(), cfg.scoring.weights)
        for name in unnamed:  # a plugin's rule: say whether it takes part, and how to change it
            log.warning("scoring rule %r (added by a plugin) %s under policy %r; set "
                        "[scoring.weights] %s to choose", name,
                        f"joins with its default weight {weights[name]:g}" if weights[name]
                        else "is off", cfg.scoring.policy, name)
        weighted = rules_from(list(rules.values()), weights)
        if not any(w > 0 for _, w in weighted.values()):
            raise ConfigError("at least one scoring rule needs a weight > 0", field="scoring.weights")
        selector = ModelSelector(
            weighted, self.stats,
            live=self._live, breaker_open=self.breakers.is_open,
            on_rank=self.metrics.selection, live_provider=self._has_live,
            breaker_ids=self.breakers.tracked,
            exclude_unpriced=not cfg.budget.allow_unpriced,
            disabled=disabled_models(cfg), limited=lambda: self.limiter.blocked())

        strategies = self.plugins.fallback_strategies()
        stray = set(cfg.fallback.options) - set(cfg.fallback.strategies)
        if stray:
            raise ConfigError(f"options for {', '.join(sorted(stray))}, which fallback.strategies does not "
                              f"use", field=f"fallback.options.{sorted(stray)[0]}")
        chosen = []
        for i, name in enumerate(cfg.fallback.strategies):
            st = strategies.get(name)
            if st is None:
                raise ConfigError(f"unknown strategy {name!r}; available: "
                                  f"{', '.join(sorted(strategies))}",
                                  field=f"fallback.strategies[{i}]")
            options = structure_options(cfg.fallback.options.get(name, {}), st.options_type,
                                        field=f"fallback.options.{name}")
            try:
                chosen.append(st.factory(options))
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc), field=f"fallback.options.{name}") from exc
        fallback = FallbackChain(chosen, cfg.fallback.max_attempts, self.breakers,
                                 dict(cfg.fallback.graph))

        if backend is None:
            backends = self.plugins.budget_backends()
            bt = backends.get(cfg.budget.backend)
            if bt is None:
                raise ConfigError(f"unknown budget backend {cfg.budget.backend!r}; installed: "
                                  f"{', '.join(sorted(backends))}", field="budget.backend")
            opts = structure_options(cfg.budget.options, bt.options_type,
                                     field="budget.options", base_dir=cfg.base_dir)
            backend = bt.factory(opts)
        tokens = TokenManager(
            self.plugins.token_counter(self._provider_of), backend, cfg.budget.limits,
            cfg.budget.allow_unpriced, lease_ttl(cfg.budget.reservation_ttl, cfg.timeout),
            self.metrics,
            default_max_tokens=cfg.default_max_tokens)
        sc = cfg.scoring
        spreader = Spreader(sc.spread_margin, sc.spread_by, self.stats.in_flight,
                            lambda card: self.limiter.headroom(card),
                            sc.spread_seed) if sc.spread else None
        return _Routing(selector, fallback, backend, tokens, spreader)

    def _install(self, routing: _Routing) -> None:
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
        self.tokens = routing.tokens
        self.spreader = routing.spreader
        self._observers = self.plugins.has_observers()

    def _provider_of(self, card: ModelCard) -> Provider:
        try:
            return self._providers[card.provider]
        except KeyError:
            raise ModelNotFound(card.id) from None

    def _has_live(self, provider: str) -> bool:
        """Whether a provider reports live statistics (the selector asks only those)."""
        return getattr(self._providers.get(provider), "live_stats", None) is not None

    def _live(self, card: ModelCard) -> Mapping[str, float]:
        p = self._providers.get(card.provider)
        return live_stats(p, card) if p is not None else {}

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

    async def _list(self, cfg: Config, name: str, provider: Provider,
                    cards: dict[str, ModelCard]) -> None:
        """Add the models ``provider`` lists to ``cards`` (errors name its config entry)."""
        index = next((i for i, pc in enumerate(cfg.providers)
                      if pc.name == name), None)
        try:
            listed = await provider.list_models()
        except Exception as exc:
            mapped = _provider_error(exc, index, name, "listing models failed")
            if mapped is None:
                raise
            raise mapped from exc
        for card in listed:
            problem = None
            if card.provider != name:
                problem = f"lists {card.id}, which belongs to provider {card.provider!r}"
            elif card.id in cards:
                problem = f"lists {card.id} again; the first one is kept"
            if problem is not None:
                if self.plugins.strict or cfg.strict_plugins:
                    raise PluginError(problem, plugin=f"provider {name}")
                log.error("provider %r %s", name, problem)
                continue
            cards[card.id] = card

    def _check_names(self, config: Config | None = None,
                     models: Mapping[str, ModelCard] | None = None) -> None:
        """Names in the configuration that no provider or model answers to are mistakes
        (a limit that guards nothing, an edge never followed, a pin no model meets): refuse
        them at start-up. A configured provider that is switched off (``enabled = false``)
        still counts as known, and so do its models; ``key:`` scopes are dynamic."""
        cfg = config or self.config
        off = {pc.name for pc in cfg.providers if not pc.enabled}
        providers = set(self._providers) | off
        if models is None:
            models = self.selector.models

        def model_known(mid: str) -> bool:
            return mid in models or mid.partition("/")[0] in off

        def unknown(kind: str, name: str, known: Iterable[str]) -> str:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; known: {', '.join(sorted(known)[:10]) or 'none'}")
            return f"no {kind} named {name!r}{hint}"

        scoped = [(f"budget.limits[{i}].scope", lim.scope)
                  for i, lim in enumerate(cfg.budget.limits)]
        scoped += [(f"rate_limits.limits[{i}].scope", lim.scope)
                   for i, lim in enumerate(cfg.rate_limits.limits)]
        for field, scope in scoped:
            kind, _, name = scope.partition(":")
            if kind == "provider" and name not in providers:
                raise ConfigError(unknown("provider", name, providers) + " (this limit would "
                                  "guard nothing)", field=field)
            if kind == "model" and not model_known(name):
                raise ConfigError(unknown("model", name, models) + " (this limit would guard "
                                  "nothing; model ids are <provider>/<model>)", field=field)
        for src, targets in cfg.fallback.graph.items():
            for mid in (src, *targets):
                if not model_known(mid):
                    raise ConfigError(unknown("model", mid, models),
                                      field=f"fallback.graph.{src}")
        req = cfg.requirements
        for mid in sorted(req.models or ()):
            if not model_known(mid):
                raise ConfigError(unknown("model", mid, models), field="requirements.models")
        for key in ("providers", "exclude_providers"):
            for name in sorted(getattr(req, key) or ()):
                if name not in providers:
                    raise ConfigError(unknown("provider", name, providers),
                                      field=f"requirements.{key}")

    @guarded
    async def aclose(self) -> None:
        """Close every provider and the budget backend."""
        if self._closed:
            return
        self._closed = True
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
        from .tokens import prompt_bounds

        upper, lower = prompt_bounds(request)
        return RequestShape(upper, request.max_tokens, exact=False,
                            recount=lambda card: self.tokens.counter(card, request, None),
                            prompt_lower=lower)

    def _require_started(self, what: str) -> None:
        """``rank`` and ``get_model`` are synchronous and cannot discover models themselves:
        before ``start()`` the configured providers' models are not known yet, and a ranking
        of none would read as "no model meets the requirements"."""
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
                       end: float = math.inf, timeout: float = math.inf) -> Request:
        if not isinstance(request, AIRequest):
            from .errors import InvalidRequest

            raise InvalidRequest(f"expected an AIRequest, got {type(request).__name__}",
                                 field="request")
        if not self._started:
            await self._start_within(end, timeout)
        if self._shared is not None and self._shared.due():
            await self._shared.sync(end)
        req = with_needs(requirements or self.config.requirements, request)
        shape = self._shape(request)
        decision = self.selector.rank(req, shape)
        if not decision.ranked and not self.limiter.idle:  # at rate limits: wait, or say so
            decision = await self.limiter.wait_for_room(
                decision, lambda: self.selector.rank(req, shape), end)
        if self.spreader is not None:  # equivalent candidates share the load
            decision = self.spreader.apply(decision)
        if not decision.ranked:  # builds no Candidate and sorts nothing
            from .errors import CapabilityNotSupported, UnpricedModel
            from .selection import UNPRICED

            unpriced = [mid for mid, why in decision.excluded.items() if why == UNPRICED]
            if unpriced:  # it meets everything else: the price is what is missing
                raise UnpricedModel(unpriced[0])
            off = sorted(mid for mid, why in decision.excluded.items() if why == DISABLED)
            if off and req.models is not None and set(req.models) <= set(off):
                raise CapabilityNotSupported(
                    f"{', '.join(off)} {'is' if len(off) == 1 else 'are'} disabled in "
                    f"configuration (enabled = false in its [[providers.models]] entry)")
            raise CapabilityNotSupported(
                f"no model meets the requirements ({len(self.models)} registered)",
                excluded=dict(decision.excluded))
        return Request(os.urandom(16).hex(), request, req, decision,
                       prompt_bound=shape.prompt_tokens)

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
        from .errors import InvalidRequest

        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise InvalidRequest(f"must be a finite number of seconds > 0, got {timeout!r}", field="timeout")
        ttl = self.config.budget.reservation_ttl
        if ttl is not None and lease_needed(timeout) > ttl:
            # Budget leases last reservation_ttl: one that expired mid-request would hand its
            # headroom to other requests while this one may still spend it.
            raise InvalidRequest(f"{timeout:g} s is longer than budget reservations live "
                                 f"(budget.reservation_ttl = {ttl:g} s, less "
                                 f"{lease_needed(0):g} s for cleanup); raise reservation_ttl",
                                 field="timeout")
        return float(timeout)

    def _reachable(self, ctx: Request) -> Callable[[str], ModelCard | None]:
        """A ``[fallback.graph]`` target outside the ranking, when the request may go there:
        it meets every requirement but the ``models`` pin, which says where a request goes
        first; an explicit edge says where it goes next. Ranked once per request, on first use."""
        ranked: list[Mapping[str, ModelCard]] = []

        def reachable(model_id: str) -> ModelCard | None:
            if not self.config.fallback.graph:
                return None
            if not ranked:
                loose = attrs.evolve(ctx.requirements, models=None)
                decision = self.selector.rank(loose, self._shape(ctx.request))
                ranked.append({c.id: c for c in decision.cards})
            return ranked[0].get(model_id)
        return reachable

    def _worst_case(self, ctx: Request) -> Callable[[ModelCard], Decimal | None]:
        return lambda card: self.tokens.estimate(ctx.request, card).worst_case_cost

    def _on_attempt(self, ctx: Request, *, defer_ok: bool = False
                    ) -> Callable[[AttemptRecord, ModelCard], None]:
        """Report an attempt to metrics, the ledger and observers. ``defer_ok``: a stream's
        successful attempt is reported when the stream ends, with what it really used."""
        def note(rec: AttemptRecord, card: ModelCard) -> None:
            if defer_ok and rec.outcome == "ok":
                return
            err = type(rec.error).__name__ if rec.error is not None else None
            self.metrics.attempt(model=card.id, provider=card.provider, outcome=rec.outcome,
                                 error=err, usage=rec.usage, duration=rec.latency_s)
            # Written with its settlement: not again in the end-of-request batch.
            written = ctx.settled_rows is not None and rec.number in ctx.settled_rows
            if written and not self._observers:
                return
            scopes = tuple([c.scope for c in self.tokens.charges(card, ctx.request.budget_key)])
            if not written:
                ctx.ledger.append(ledger_row(ctx, rec.number, card, rec.outcome, rec.usage,
                                              self._attempt_cost(rec, card), err,
                                              rec.latency_s, scopes))
            if self._observers:
                self.plugins.attempt_finished(AttemptEvent(ctx.id, rec, card, scopes))
        return note

    @staticmethod
    def _attempt_cost(rec: AttemptRecord, card: ModelCard) -> Decimal | None:
        """What an attempt cost: its settled cost, a failure's partial charge, else nothing
        ($0) for a priced model; None (unknown) only when the model has no price."""
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
        if self._ledger_backend and ctx.ledger:
            rows = list(ctx.ledger)
            try:
                await shielded(lambda: self.budget_backend.record(rows),  # type: ignore[attr-defined]
                               self._inline, ctx.cleanup_deadline)
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

    @staticmethod
    def _store_failed(exc: BudgetStoreError, timeout: float, ctx: Request) -> BaseException:
        """The error a request ends with when a budget store call failed: ``exc`` itself, or
        :class:`DeadlineExceeded` caused by it when the request's deadline stopped the call."""
        if isinstance(exc, BudgetStoreTimeout) and exc.by_deadline:
            err = DeadlineExceeded(timeout=timeout, attempts=ctx.records)
            err.__cause__ = exc
            return err
        return exc

    async def _begin_attempt(self, ctx: Request, card: ModelCard
                             ) -> tuple[Estimate, Reservation | None, AIRequest]:
        """Estimate, check and reserve one attempt's worst case; returns the request to send:
        ``ctx.request`` with ``max_tokens`` set to the output the estimate reserved, so an
        honest upstream cannot produce more than was reserved."""
        ceiling = ctx.requirements.max_request_cost
        # The prompt is counted now only when something reads the count before the answer:
        # a budget, a cost ceiling, or metrics that record (estimate_ratio); else only if
        # the window is tight (see TokenManager.estimate), or later, if a failure needs it.
        lazy = not (self.metrics.recording() or not self.limiter.idle  # tokens per minute
                    or self.tokens.needs_count(card, ctx.request.budget_key, ceiling))
        estimate = self.tokens.estimate(ctx.request, card, lazy=lazy, bound=ctx.prompt_bound)
        if estimate.counted and not estimate.prompt.exact:
            self.metrics.token_estimates.add(1, {"gen_ai.request.model": card.id})
        self.tokens.check_ceiling(card, estimate, ceiling)
        if not self.limiter.idle:
            ctx.lease = await self.limiter.admit(
                card, estimate.prompt.tokens + estimate.max_output, ctx.request.budget_key,
                ctx.id, ctx.deadline if ctx.deadline is not None else math.inf)
        try:
            reservation = await self.tokens.reserve(
                card, estimate, budget_key=ctx.request.budget_key, request_id=ctx.id,
                ttl=lease_ttl(self.config.budget.reservation_ttl,
                              ctx.timeout or self.config.timeout)
                if self.tokens.limits else None)  # no limits: no reservation, no lease
        except BaseException:
            if ctx.lease is not None:  # never sent: its request, tokens and slot come back
                lease, ctx.lease = ctx.lease, None
                await self.limiter.release(lease)
            raise
        self.stats.started(card.id)
        sent = ctx.request
        if sent.max_tokens != estimate.max_output:
            sent = attrs.evolve(sent, max_tokens=estimate.max_output)
        return estimate, reservation, sent

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
                            started: float, estimate: Estimate) -> None:
        """Settle what a failed attempt is known to have used (an estimate of it capped by
        ``estimate``); release the rest. A store too slow for the cleanup bound leaves the
        reservation a lease (it expires and ``reconcile`` releases it): logged, and ``exc``
        stays the error."""
        if isinstance(exc, ModelError):
            ctx.in_flight = None
            exc.with_context(model_id=card.id, provider=card.provider)
            self.stats.finished(card.id, ok=False, latency_s=None)
        elif isinstance(exc, anyio.get_cancelled_exc_class()) and ctx.past_deadline():
            # Cut by the request's deadline: a timeout of this model (recorded as such by
            # _cut_by_deadline, which reads ctx.in_flight), not a caller's cancellation.
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
        if usage is not None:
            usage = self.tokens.bounded(usage, estimate)
            if isinstance(exc, ModelError):
                exc.usage = usage
            cost = self.tokens.estimate_cost(card, usage)
            number = len(ctx.records) + 1  # the chain records this failure next
            try:
                await self._settle(ctx, card, reservation, cost, lambda scopes: ledger_row(
                    ctx, number, card, "error", usage, cost, type(exc).__name__,
                    time.perf_counter() - started, scopes))
            except BudgetStoreError as failed:
                # Not committed: the attempt's ledger row must not claim it was (committed
                # spend equals the ledger's costs); the lease holds the worst case meanwhile.
                self._lease_left(reservation, "settled", failed)
            else:
                exc.cost = cost  # type: ignore[attr-defined]
        elif reservation is not None:
            try:
                await shielded(lambda: self.tokens.release(reservation), self._inline,
                               ctx.cleanup_deadline)
            except BudgetStoreError as failed:
                self._lease_left(reservation, "released", failed)

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
        estimate, reservation, sent = await self._begin_attempt(ctx, card)
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
            if not isinstance(resp, ProviderResponse) or not isinstance(resp.usage, Usage):
                raise MalformedResponse(f"provider {card.provider!r} returned "
                                        f"{type(resp).__name__}, not a ProviderResponse with a Usage")
            if resp.choices or sent.n != 1:
                _check_choices(resp, sent.n)
        except BaseException as exc:
            await self._fail_attempt(ctx, card, reservation, exc, t0, estimate)
            raise
        ctx.in_flight = None
        usage = resp.usage
        if ctx.lease is not None:
            lease, ctx.lease = ctx.lease, None
            await self.limiter.settle(lease, usage.input_tokens + usage.output_tokens)
        if resp.rate_limits is not None:
            self.limiter.observe(card, resp.rate_limits)
        cost = self.tokens.track_usage(card, usage)
        if estimate.counted:
            self.metrics.accuracy(estimate.prompt, usage, model=card.id)
        latency = time.perf_counter() - t0
        if reservation is not None:
            try:
                await self._settle(ctx, card, reservation, cost, lambda scopes: ledger_row(
                    ctx, len(ctx.records) + 1, card, "ok", usage, cost, None, latency, scopes))
            except BudgetStoreError as exc:
                self._lease_left(reservation, "settled", exc)
                raise
        self.stats.finished(card.id, ok=True, latency_s=latency)
        return Result(resp, usage, cost)

    async def complete(self, request: AIRequest, requirements: ModelRequirements | None = None,
                       *, timeout: float | None = None) -> AIResponse:
        """Route ``request`` and return the answer. Raises a :class:`SquirrelError` subclass:
        :class:`DeadlineExceeded` after ``timeout`` (default: the config's), the error itself
        when one attempt was made, :class:`FallbackExhausted` when several were."""
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        end = anyio.current_time() + timeout
        ctx = await self._prepare(request, requirements, end, timeout)
        ctx.deadline, ctx.timeout = end, timeout
        response: AIResponse | None = None
        error: BaseException | None = None
        span = self.metrics.tracer.start_span("chat")
        try:
            # anyio.fail_after(timeout), without its generator-based context manager.
            with anyio.CancelScope(deadline=end) as scope:
                result = await self.fallback.run(
                    ctx.decision.ranked,
                    lambda card, n: self._attempt(ctx, card, n), deadline=deadline,
                    worst_case=self._worst_case(ctx), records=ctx.records,
                    on_attempt=self._on_attempt(ctx), reachable=self._reachable(ctx))
            if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
                raise TimeoutError
            last = ctx.records[-1]
            resp = result.response
            response = AIResponse(resp.text, last.model_id, result.usage,
                                  result.cost,
                                  ctx.decision.answered(last.model_id, ctx.records),
                                  tuple(ctx.records),
                                  resp.finish_reason, ctx.id, resp.tool_calls,
                                  resp.choices if len(resp.choices) > 1 else ())
            span.set_attribute("gen_ai.request.model", last.model_id)
            return response
        except TimeoutError as exc:
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
            span.set_attribute("squirrel.attempts", len(ctx.records))
            if error is not None:
                span.set_attribute("error.type", type(error).__name__)
            span.end()
            await self._finish(ctx, response, error, timeout)

    @asynccontextmanager
    async def stream(self, request: AIRequest, requirements: ModelRequirements | None = None,
                     *, timeout: float | None = None) -> AsyncIterator[ResponseStream]:
        """Stream the answer: ``async with mm.stream(req) as s: async for chunk in s: ...``.

        Failures before the first chunk fall back like :meth:`complete`; after it the request
        is never replayed and :class:`MidStreamError` carries the partial text. The tokens
        received are charged whatever happens; ``s.response`` is set once the stream ends.
        """
        if isinstance(request, AIRequest) and request.n != 1:
            from .errors import InvalidRequest

            raise InvalidRequest(f"a stream carries one answer: n must be 1, got {request.n} "
                                 "(use complete() for several)", field="n")
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        end = anyio.current_time() + timeout
        ctx = await self._prepare(request, requirements, end, timeout)
        ctx.deadline, ctx.timeout = end, timeout
        rs: ResponseStream | None = None
        error: BaseException | None = None
        span = self.metrics.tracer.start_span("chat")
        try:
            with anyio.CancelScope(deadline=end) as scope:
                start = await self.fallback.run(
                    ctx.decision.ranked,
                    lambda card, n: self._open_stream(ctx, card), deadline=deadline,
                    worst_case=self._worst_case(ctx), records=ctx.records,
                    on_attempt=self._on_attempt(ctx, defer_ok=True), defer_success=True,
                    reachable=self._reachable(ctx))
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
            if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
                raise TimeoutError
        except TimeoutError as exc:
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

    def _cut_by_deadline(self, ctx: Request, timeout: float) -> None:
        """The request's deadline cut an upstream call short (no answer, or no first chunk):
        that attempt is a timeout. Record it (ledger row, metrics, observers), count it as a
        failure against the model (breaker and stats), so DeadlineExceeded counts it too."""
        if ctx.in_flight is None:
            return
        card, started = ctx.in_flight
        ctx.in_flight = None
        err = ProviderTimeout(f"cut by the request's {timeout:g}s deadline",
                              model_id=card.id, provider=card.provider)
        self.breakers.failure(card.id, err)
        rec = AttemptRecord(len(ctx.records) + 1, card.id, card.provider, "error", error=err,
                            latency_s=time.perf_counter() - started)
        ctx.records.append(rec)
        self._on_attempt(ctx)(rec, card)

    async def _open_stream(self, ctx: Request, card: ModelCard) -> Stream:
        estimate, reservation, sent = await self._begin_attempt(ctx, card)
        t0 = time.perf_counter()
        ctx.in_flight = (card, t0)
        it: AsyncIterator[StreamChunk] | None = None
        try:
            it = self._provider_of(card).stream(card, sent).__aiter__()
            first: StreamChunk | None = None
            limit = self.config.attempt_timeout
            with anyio.move_on_after(limit if limit is not None else float("inf")) as scope:
                try:
                    first = await it.__anext__()
                except StopAsyncIteration:
                    first = None
            if scope.cancelled_caught:
                raise ProviderTimeout(f"no first chunk within attempt_timeout={limit:g}s")
        except BaseException as exc:
            if it is not None:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await close_within(aclose, ctx.cleanup_deadline)
            if isinstance(exc, MidStreamError):
                # Broken before we saw a chunk: nothing reached the caller, so it may fall back.
                plain = ProviderConnectionError(f"stream broke before its first chunk: {exc}",
                                                model_id=card.id, provider=card.provider)
                plain.usage = exc.usage
                await self._fail_attempt(ctx, card, reservation, plain, t0, estimate)
                raise plain from exc
            await self._fail_attempt(ctx, card, reservation, exc, t0, estimate)
            raise
        ctx.in_flight = None
        return Stream(card, it, first, reservation, estimate, t0)


@attrs.frozen
class _Routing:
    """What :meth:`ModelManager._routing` builds from a configuration."""

    selector: ModelSelector
    fallback: FallbackChain
    backend: BudgetBackend
    tokens: TokenManager
    spreader: Spreader | None = None


def _check_choices(resp: ProviderResponse, n: int) -> None:
    """A provider asked for ``n`` answers returns that many (``choices``; one answer may
    leave it empty), else the answer is malformed (what it used is still charged)."""
    got = len(resp.choices) or 1
    if got != n or any(not isinstance(c, Choice) or c.index != i for i, c in enumerate(resp.choices)):
        raise MalformedResponse(f"asked for n={n} answer(s), got {got} (or misnumbered)",
                                usage=resp.usage)


def disabled_models(cfg: Config) -> frozenset[str]:
    """The ids of the models switched off with ``enabled = false`` in ``cfg``."""
    return frozenset(f"{pc.name}/{o.name}" for pc in cfg.providers for o in pc.models
                     if not o.enabled)


def _restart_needed(old: Config, new: Config) -> None:
    """Raise :class:`ConfigError` naming the first field ``reload()`` cannot apply live."""
    def refuse(field: str) -> None:
        raise ConfigError("cannot change while the manager runs; restart to apply it "
                          "(reload applies model overrides, scoring, requirements, fallback, "
                          "circuit breaker, budget and rate limits, and timeouts)", field=field)

    if [pc.name for pc in old.providers] != [pc.name for pc in new.providers]:
        refuse("providers")
    for i, (a, b) in enumerate(zip(old.providers, new.providers, strict=True)):
        for key in ("type", "options", "discover", "enabled"):
            if getattr(a, key) != getattr(b, key):
                refuse(f"providers[{i}].{key}")
    for key in ("backend", "options"):
        if getattr(old.budget, key) != getattr(new.budget, key):
            refuse(f"budget.{key}")
    for key in ("store", "options"):
        if getattr(old.rate_limits, key) != getattr(new.rate_limits, key):
            refuse(f"rate_limits.{key}")
    for key in ("telemetry", "strict_plugins", "base_dir"):  # base_dir: None inherits
        if getattr(old, key) != getattr(new, key):
            refuse(key)


def _provider_error(exc: Exception, index: int | None, name: str, doing: str) -> ConfigError | None:
    """What a provider's failure while it is created or lists its models is raised as: a
    ConfigError whose field is the provider's config entry (``index``; None for a provider
    registered by hand), or None to raise ``exc`` as it is (another SquirrelError, or a
    ConfigError whose path already starts at the top of the configuration)."""
    if isinstance(exc, ConfigError):
        return None if index is None else _provider_field(exc, index, name)
    if isinstance(exc, SquirrelError):
        return None
    if index is None:
        return ConfigError(f"provider {name!r}: {doing}: {type(exc).__name__}: {exc}")
    return ConfigError(f"{doing}: {type(exc).__name__}: {exc}", field=f"providers[{index}]")


def _provider_field(exc: ConfigError, index: int, name: str) -> ConfigError | None:
    """``exc`` with its field as a path from the top of the configuration, or None if it is
    one already. Every field path has one style, ``providers[<index>].options.x``; a plugin
    knows only its provider's name, and may say ``providers.<name>.options.x`` or give a path
    relative to its table (``options.x``)."""
    field = exc.field or ""
    own = f"providers.{name}"
    if field == own or field.startswith((own + ".", own + "[")):
        rest = field[len(own):]
    elif field.startswith("providers"):
        return None
    else:
        rest = "." + field if field else ""
    message = str(exc).removeprefix(f"{field}: ") if field else str(exc)
    return ConfigError(message, field=f"providers[{index}]{rest}")
