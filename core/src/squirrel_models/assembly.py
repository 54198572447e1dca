"""How a :class:`~squirrel_models.manager.ModelManager` is put together from a configuration:
providers, rate limiter, selector, fallback chain, budget backend and token manager, the
models each provider lists, and the checks that refuse names nothing answers to or changes
``reload()`` cannot apply live. A mixin of ``ModelManager`` (internal)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Collection, Iterable, Mapping
from typing import Any, cast

import attrs

from .budget import BudgetBackend
from .config import Config, lease_ttl, structure_options
from .errors import (
    ConfigError,
    ModelError,
    ModelNotFound,
    PluginError,
    ProviderConnectionError,
    ProviderTimeout,
    SquirrelError,
    shown,
)
from .fallback import FallbackChain
from .limiter import RateLimiter
from .managerbase import ManagerBase
from .plugincheck import card_problem, live_problem
from .providers import Provider, ProviderSpec, live_stats
from .ratefit import RateFit
from .scoring import policy_weights
from .secrets import contains_secret
from .selection import ModelSelector, rules_from
from .spread import Spreader
from .tokens import TokenManager
from .types import ModelCard

__all__ = ["Assembly", "Routing", "disabled_models"]

log = logging.getLogger("squirrel_models")


class Assembly(ManagerBase):
    """Construction and configuration checks of ``ModelManager`` (see the module)."""

    def _make_limiter(self, cfg: Config) -> RateLimiter:
        """The rate limiter and its store (``[rate_limits]``; see limiter.py)."""
        rl = cfg.rate_limits
        stores = self.plugins.ratelimit_stores()
        st = stores.get(rl.store)
        if st is None:
            raise ConfigError(f"unknown rate-limit store {rl.store!r}; installed: "
                              f"{', '.join(sorted(stores))}{self.plugins.not_loaded()}",
                              field="rate_limits.store")
        opts = structure_options(rl.options, st.options_type, field="rate_limits.options",
                                 base_dir=cfg.base_dir)
        return RateLimiter(rl, st.factory(opts), self._lease_ttl(cfg),
                           on_refusal=self.metrics.rate_limited,
                           max_retry_after=cfg.circuit_breaker.max_cooldown)

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
                    f"{', '.join(sorted(types)) or 'none'}{self.plugins.not_loaded()}",
                    field=f"providers[{i}].type")
            options = structure_options(pc.options, ptype.options_type,
                                        field=f"providers[{i}].options", base_dir=cfg.base_dir)
            spec = ProviderSpec(pc.name, pc.type, options, pc.models, pc.discover, path=f"providers[{i}]")
            try:
                made[pc.name] = ptype.factory(spec)
            except Exception as exc:
                mapped = provider_error(exc, i, pc.name, f"provider {pc.type!r} could not be created")
                if mapped is None:
                    raise
                raise mapped from exc
            provider = made[pc.name]
            if getattr(type(provider), "_simple_provider", False):
                # its usage is counted with a plugin's tokenizer too (docs/hooks.md count_tokens)
                def its(_: ModelCard, p: Provider = provider) -> Provider:
                    return p

                cast(Any, provider)._hook_count = self.plugins.token_counter(its)

    def _routing(self, cfg: Config, backend: BudgetBackend | None) -> Routing:
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
            disabled=disabled_models(cfg), limited=self.limiter.blocked)  # reconfigured in place

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
        # One seed for every draw of the manager: the load spread's and the backoff's jitter
        # (each its own stream, so retries do not shift the spread's draws). Unset: a random
        # one per manager, recorded in each spread draw, so a run can be replayed.
        sc = cfg.scoring
        seed = sc.spread_seed if sc.spread_seed is not None else int.from_bytes(os.urandom(4), "big")
        fallback = FallbackChain(chosen, cfg.fallback.max_attempts, self.breakers,
                                 dict(cfg.fallback.graph), rng=random.Random(f"retry jitter {seed}"))

        if backend is None:
            backends = self.plugins.budget_backends()
            bt = backends.get(cfg.budget.backend)
            if bt is None:
                raise ConfigError(f"unknown budget backend {cfg.budget.backend!r}; installed: "
                                  f"{', '.join(sorted(backends))}{self.plugins.not_loaded()}",
                                  field="budget.backend")
            opts = structure_options(cfg.budget.options, bt.options_type,
                                     field="budget.options", base_dir=cfg.base_dir)
            backend = bt.factory(opts)
        tokens = TokenManager(
            self.plugins.token_counter(self._provider_of), backend, cfg.budget.limits,
            cfg.budget.allow_unpriced, lease_ttl(cfg.budget.reservation_ttl, cfg.timeout),
            self.metrics,
            default_max_tokens=cfg.default_max_tokens)
        # Models a configured limit can never admit the request on are left out of rankings.
        selector.unfit = RateFit.for_limits(cfg.rate_limits.limits, tokens)
        spreader = Spreader(sc.spread_margin, sc.spread_by, self.stats.in_flight,
                            lambda card: self.limiter.headroom(card), seed) if sc.spread else None
        return Routing(selector, fallback, backend, tokens, spreader)

    def _provider_of(self, card: ModelCard) -> Provider:
        try:
            return self._providers[card.provider]
        except KeyError:
            raise ModelNotFound(card.id) from None

    def _has_live(self, provider: str) -> bool:
        """Whether a provider reports live statistics (the selector asks only those)."""
        return getattr(self._providers.get(provider), "live_stats", None) is not None

    def _live(self, card: ModelCard) -> Mapping[str, float]:
        """A provider's live statistics for ``card``, checked where they enter (see
        ``plugincheck.live_problem``): ones that raise or are junk are none, and the
        provider's failure is logged once (strict mode: a PluginError)."""
        p = self._providers.get(card.provider)
        if p is None:
            return {}
        try:
            stats = live_stats(p, card)
            problem = live_problem(stats)
        except Exception as exc:
            problem = f"raised {type(exc).__name__}"
        if problem is None:
            return stats or {}
        self.plugins._fail(f"provider {card.provider}", f"live_stats {problem} for {card.id}; "
                                                          "ignored")
        return {}

    async def _list(self, cfg: Config, name: str, provider: Provider,
                    cards: dict[str, ModelCard]) -> None:
        """Add the models ``provider`` lists to ``cards`` (errors name its config entry)."""
        index = next((i for i, pc in enumerate(cfg.providers)
                      if pc.name == name), None)
        try:
            listed = await provider.list_models()
        except Exception as exc:
            doing = f"listing its models {'at reload' if self._started else 'at start-up'} failed"
            # Another error of ours (an InvalidRequest from a card or Price the plugin built
            # of what its upstream listed) names the provider too.
            mapped = provider_error(exc, index, name, doing, passes=(ModelError, PluginError))
            if mapped is None:
                if isinstance(exc, ModelError):
                    say_which_listing_failed(exc, name, index, doing,
                                             None if index is None else cfg.providers[index].discover)
                raise
            raise mapped from exc
        if not isinstance(listed, list | tuple):
            # Not a listing that failed (an upstream's answer): the plugin's own mistake.
            raise PluginError(f"list_models returned {shown(listed)}, not a list of ModelCards",
                              plugin=f"provider {name}")
        for card in listed:
            problem = None
            if isinstance(card, ModelCard) and isinstance(card.id, str) and contains_secret(card.id):
                # An upstream that echoes its key in its model list (some proxies do): the id
                # would reach model lists, answers' "model" and metric labels. Not shown here.
                problem = "lists a model whose id shows a secret (whole, in part or escaped); left out"
            elif (problem := card_problem(card, name)) is not None:
                problem += "; left out"
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
            import difflib  # only a name that matches nothing needs it

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
        for key in ("allowed_models", "models"):
            for mid in sorted(getattr(req, key) or ()):
                if not model_known(mid):
                    raise ConfigError(unknown("model", mid, models), field=f"requirements.{key}")
        for key in ("providers", "exclude_providers"):
            for name in sorted(getattr(req, key) or ()):
                if name not in providers:
                    raise ConfigError(unknown("provider", name, providers),
                                      field=f"requirements.{key}")


@attrs.frozen
class Routing:
    """What :meth:`ModelManager._routing` builds from a configuration."""

    selector: ModelSelector
    fallback: FallbackChain
    backend: BudgetBackend
    tokens: TokenManager
    spreader: Spreader | None = None


def disabled_models(cfg: Config) -> frozenset[str]:
    """The ids of the models switched off with ``enabled = false`` in ``cfg``."""
    return frozenset(f"{pc.name}/{o.name}" for pc in cfg.providers for o in pc.models
                     if not o.enabled)


def restart_needed(old: Config, new: Config) -> None:
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


def provider_error(exc: Exception, index: int | None, name: str, doing: str, *,
                   passes: type | tuple[type, ...] = SquirrelError) -> ConfigError | None:
    """What a provider's failure while it is created or lists its models is raised as: a
    ConfigError whose field is the provider's config entry (``index``; None for a provider
    registered by hand), or None to raise ``exc`` as it is (an error of the ``passes`` types,
    or a ConfigError whose path already starts at the top of the configuration)."""
    if isinstance(exc, ConfigError):
        return None if index is None else provider_field(exc, index, name)
    if isinstance(exc, passes):
        return None
    if index is None:
        return ConfigError(f"provider {name!r}: {doing}: {type(exc).__name__}: {exc}")
    return ConfigError(f"{doing}: {type(exc).__name__}: {exc}", field=f"providers[{index}]")


def say_which_listing_failed(exc: ModelError, name: str, index: int | None, doing: str,
                             discover: bool | None) -> None:
    """Put in ``exc``'s message which provider failed to list its models, when, and what the
    user can do. ``exc`` keeps its type (a caller may catch ``AuthenticationError``): only its
    message grows, as :func:`squirrel_models.upstream.boundary` names the endpoint. An upstream
    that cannot be reached or answers badly for now can be left out of start-up by listing its
    models in the configuration (``discover`` is None for a provider registered by hand)."""
    entry = f"provider {name!r}" + ("" if index is None else f" (providers[{index}])")
    message = f"{entry}: {doing}: {exc.args[0] if exc.args else type(exc).__name__}"
    if exc.retryable:
        down = isinstance(exc, ProviderConnectionError | ProviderTimeout)
        todo = ["start its server (or correct its address)"] if down else []
        if discover:
            todo.append("list its models under [[providers.models]] and set discover = false "
                        "to start without asking it")
        if todo:
            message += "; " + ", or ".join(todo)
    with contextlib.suppress(Exception):  # an error class whose args cannot be set
        exc.args = (message, *exc.args[1:])


def provider_field(exc: ConfigError, index: int, name: str) -> ConfigError | None:
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
