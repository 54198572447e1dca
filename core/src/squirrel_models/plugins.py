"""Plugin loading and the typed facade over pluggy: the rest of the core calls these methods,
never ``pm.hook.*`` directly.

Loading is lazy (first use), idempotent and in this order:

1. the block list: ``SQUIRREL_DISABLE_PLUGINS`` (comma-separated plugin names);
2. entry points in the ``squirrel_models`` group, sorted by name; if ``SQUIRREL_LOAD_PLUGINS``
   is set, only the names it lists (empty: none);
3. the built-ins of :mod:`squirrel_models.builtins`;
4. ``check_pending()``: a hookimpl with no matching spec is a violation.

A name in either variable that no installed plugin has is warned about.
``SQUIRREL_TRACE_PLUGINS=1`` logs every hook call at DEBUG. A plugin that fails to import,
violates the specs or raises in a hook is skipped with a logged reason; with ``strict=True``
(or ``SQUIRREL_STRICT_PLUGINS=1``) each of these raises :class:`PluginError` instead.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy

from . import hookspecs
from .budget import BudgetBackendType
from .builtins import DEFAULT_PLUGINS
from .errors import PluginError, shown
from .fallback import FallbackStrategyType
from .plugincheck import count_problem
from .providers import ProviderType
from .ratelimit import RateLimitStoreType
from .responses import MAX_USAGE_TOKENS, TokenCount
from .scoring import ScoringRule
from .secrets import redact
from .sharedbreakers import BreakerStoreType
from .tokens import MAX_TOKEN_BYTES, lower_bound

if TYPE_CHECKING:
    import click

    from .events import AttemptEvent, RequestEvent
    from .providers import Provider
    from .types import AIRequest, ModelCard, TokenCount

__all__ = ["PluginInfo", "PluginManager"]

log = logging.getLogger("squirrel_models.plugins")
GROUP = "squirrel_models"
T = TypeVar("T")


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [x.strip() for x in raw.split(",") if x.strip()]


def _did_you_mean(message: str) -> str:
    """For pluggy's "unknown hook 'register_provider'": the hook the author meant, if one is
    close (the typo otherwise reads as a bug in the plugin manager)."""
    import difflib
    import re

    m = re.search(r"unknown hook '([^']+)'", message)
    if m is None:
        return ""
    close = difflib.get_close_matches(m.group(1), hookspecs.spec_names(), n=1)
    return f" (did you mean {close[0]!r}? the hooks are listed in docs/hooks.md)" if close else \
        " (no such hook: the hooks are listed in docs/hooks.md)"


def env_flag(name: str) -> bool:
    """A yes/no environment variable: unset, empty, ``0``, ``false``, ``no`` or ``off`` (any
    case) is no, anything else yes (``SQUIRREL_STRICT_PLUGINS=false`` turned strict mode on)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@attrs.frozen
class PluginInfo:
    """A loaded plugin: its name, where it came from, and its distribution if known."""

    name: str
    source: str  # "builtin", "entrypoint" or "manual"
    dist: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()
    #: One line: the distribution's summary, else the first line of the plugin's docstring.
    description: str = ""


#: The most failures :attr:`PluginManager.failures` lists (a hook failing anew on every
#: request must not grow it without end); later ones are logged at DEBUG.
_MAX_FAILURES = 256
#: The ``count_tokens`` hookspec's arguments, in order.
_COUNT_ARGS = ("model", "provider", "request", "text")


def least(request: AIRequest | None, text: str | None) -> int:
    """The fewest tokens any tokenizer makes of ``request``'s prompt or of ``text``: a count
    below is no count (see ``tokens.MAX_TOKEN_BYTES``)."""
    if request is not None:
        n = request._ascii_bytes  # plain ASCII text: its length, measured at validation
        return lower_bound(request) if n is None else -(-n // MAX_TOKEN_BYTES)
    return -(-len((text or "").encode("utf-8", "replace")) // MAX_TOKEN_BYTES)


@attrs.define
class PluginManager:
    """Finds, loads and calls plugins. One per :class:`~squirrel_models.ModelManager` by default."""

    strict: bool = attrs.field(
        factory=lambda: env_flag("SQUIRREL_STRICT_PLUGINS"))
    load_entry_points: bool = True
    _pm: pluggy.PluginManager = attrs.field(init=False)
    _loaded: bool = attrs.field(default=False, init=False)
    _info: dict[str, PluginInfo] = attrs.field(factory=dict, init=False)
    # The call order of each set of implementations (hooks such as count_tokens run on every
    # request): keyed by the implementations themselves, which are new objects whenever a
    # plugin is (re-)registered, so the order never goes stale.
    _order: dict[tuple[Any, ...], list[Any]] = attrs.field(factory=dict, init=False, repr=False)
    _trace: bool = attrs.field(default=False, init=False)
    _failures: list[tuple[str, str]] = attrs.field(factory=list, init=False)
    _disabled: list[tuple[str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)

    @property
    def failures(self) -> list[tuple[str, str]]:
        """Plugins skipped: (name, why). Loads the plugins first (read before anything else,
        it was empty though a plugin had failed)."""
        self.load()
        return self._failures

    @property
    def disabled(self) -> list[tuple[str, str]]:
        """Entry points not loaded on purpose: (name, why), e.g. ``SQUIRREL_DISABLE_PLUGINS``.
        Loads the plugins first."""
        self.load()
        return self._disabled

    # --- loading -------------------------------------------------------------------------

    def _fail(self, name: str, reason: str, exc: BaseException | None = None) -> None:
        reason = redact(reason)
        if self.strict:
            self._failures.append((name, reason))
            raise PluginError(reason, plugin=name) from exc
        if (name, reason) in self._failures or len(self._failures) >= _MAX_FAILURES:
            # A hook failing on every request (count_tokens): listed and logged once.
            log.debug("plugin %r skipped again: %s", name, reason)
            return
        self._failures.append((name, reason))
        log.error("plugin %r skipped: %s", name, reason)

    def load(self) -> None:
        """Load every plugin once (see the module docstring for the order). Idempotent."""
        if self._loaded:
            return
        self._loaded = True
        blocked = set(_env_list("SQUIRREL_DISABLE_PLUGINS") or ())
        for name in blocked:
            self._pm.set_blocked(name)
        self._trace = env_flag("SQUIRREL_TRACE_PLUGINS")
        allow = _env_list("SQUIRREL_LOAD_PLUGINS")
        # imported here: importlib.metadata (with email, zipfile, csv) is for loading only,
        # not for importing the API
        from importlib.metadata import entry_points

        eps = sorted(entry_points(group=GROUP), key=lambda e: e.name) if self.load_entry_points else []
        if self.load_entry_points:
            for ep in eps:
                if ep.name in blocked:
                    self._disabled.append((ep.name, "blocked by SQUIRREL_DISABLE_PLUGINS"))
                    continue
                if allow is not None and ep.name not in allow:
                    self._disabled.append((ep.name, "not in SQUIRREL_LOAD_PLUGINS"))
                    continue
                dist = getattr(ep, "dist", None)
                try:
                    plugin = ep.load()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # sys.exit() at import must not end the program
                    # name where the entry point is declared: a typo in it is fixed there
                    where = f" (entry point {ep.name} = {ep.value!r} of {dist.name} {dist.version})" if dist else ""
                    self._fail(ep.name, f"failed to import {ep.value}: {type(exc).__name__}: {exc}{where}", exc)
                    continue
                # read once: each of dist.name, .version and .metadata parses the METADATA
                # file again (three email-parser runs per plugin at every start-up)
                meta = dist.metadata if dist else None
                self._register(plugin, ep.name, "entrypoint",
                               meta["Name"] if meta else None, meta["Version"] if meta else None,
                               (meta.get("Summary") or "") if meta else "")
        for modname in DEFAULT_PLUGINS:
            short = "builtin." + modname.rsplit(".", 1)[-1]
            if short in blocked:
                self._disabled.append((short, "blocked by SQUIRREL_DISABLE_PLUGINS"))
                continue
            self._register(importlib.import_module(modname), short, "builtin")
        self._check_pending()
        if self.load_entry_points:
            self._check_names(blocked, allow, {ep.name for ep in eps})

    def _check_pending(self) -> None:
        """``check_pending()`` until every plugin with a hookimpl matching no hookspec is out:
        pluggy names one violation at a time, and the others stayed registered, unreported."""
        while True:
            try:
                self._pm.check_pending()
            except pluggy.PluginValidationError as exc:
                name = self._pm.get_name(exc.plugin) or repr(exc.plugin)
                self._pm.unregister(exc.plugin)
                self._info.pop(name, None)
                self._fail(name, f"violates the hook specs: {exc}{_did_you_mean(str(exc))}", exc)
            else:
                return

    def _check_names(self, blocked: set[str], allow: list[str] | None, installed: set[str]) -> None:
        """Warn about names in SQUIRREL_DISABLE_PLUGINS and SQUIRREL_LOAD_PLUGINS that no plugin
        has: a typo there blocked nothing, or loaded nothing, without a word."""
        known = installed | {"builtin." + m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}
        for var, names in (("SQUIRREL_DISABLE_PLUGINS", sorted(blocked)), ("SQUIRREL_LOAD_PLUGINS", allow or ())):
            for name in names:
                if name not in known:
                    log.warning("%s names %s, which no installed plugin has (installed: %s)", var, shown(name),
                                ", ".join(sorted(known)) or "none")

    def _register(self, plugin: Any, name: str, source: str, dist: str | None = None,
                  version: str | None = None, summary: str = "") -> bool:
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._fail(name, f"violates the hook specs: {exc}{_did_you_mean(str(exc))}", exc)
            return False
        hooks = tuple(sorted(h.name for h in self._pm.get_hookcallers(plugin) or ()))
        unmarked = [n for n in hookspecs.spec_names() if n not in hooks and callable(getattr(plugin, n, None))
                    and getattr(getattr(plugin, n), "__module__", None) == getattr(plugin, "__name__", "")]
        if unmarked:  # pluggy ignores an unmarked function without a word: the plugin did nothing
            log.warning("plugin %r defines %s without @hookimpl, so it is never called: mark it with "
                        "`from squirrel_models import hookimpl`", name, ", ".join(unmarked))
        # the docstring's whole first paragraph, on one line (its first line alone stopped
        # mid-sentence)
        first = (getattr(plugin, "__doc__", None) or "").strip().split("\n\n", 1)[0]
        description = summary.strip() or " ".join(first.split())
        self._info[name] = PluginInfo(name, source, dist, version, hooks, description)
        return True

    def not_loaded(self) -> str:
        """For an "unknown <name>; installed: ..." error: the plugins that were not loaded and
        why (``; not loaded: command (blocked by SQUIRREL_DISABLE_PLUGINS)``), or ``""``. An
        installed plugin the environment turned off otherwise reads as not installed."""
        self.load()
        skipped = [*self._disabled, *((name, "failed to load") for name, _ in self._failures)]
        return "; not loaded: " + ", ".join(f"{n} ({why})" for n, why in skipped) if skipped else ""

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module by hand (tests, applications)."""
        self.load()
        name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
        if not self._register(plugin, name, "manual"):
            raise PluginError("does not meet the hook specs", plugin=name)
        return name

    def unregister(self, name: str) -> None:
        self._pm.unregister(name=name)
        self._info.pop(name, None)

    def plugins(self) -> list[PluginInfo]:
        self.load()
        return list(self._info.values())

    # --- calling -------------------------------------------------------------------------

    def _each(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call each implementation of ``hook`` in registration order, isolating failures."""
        self.load()
        caller = getattr(self._pm.hook, hook)
        impls = tuple(caller.get_hookimpls())
        ordered = self._order.get(impls)
        if ordered is None:
            if len(self._order) > 256:  # only after many (un)registrations
                self._order.clear()
            ordered = self._order[impls] = self._ordered(list(impls))
        for impl in ordered:
            args = {k: kwargs[k] for k in impl.argnames}
            if self._trace:
                log.debug("hook %s -> plugin %s (%s)", hook, impl.plugin_name, ", ".join(args))
            try:
                yield impl.plugin_name, impl.function(**args)
            except (Exception, SystemExit) as exc:  # a hook calling sys.exit() is a failing hook
                self._fail(impl.plugin_name, f"hook {hook} raised {type(exc).__name__}: {exc}",
                           exc)

    def _ordered(self, impls: list[Any]) -> list[Any]:
        """tryfirst impls, then the rest in load order (first loaded, first asked), then
        trylast ones: pluggy's own call order is last-registered first."""
        rank = {name: i for i, name in enumerate(self._info)}
        return sorted(impls, key=lambda im: (0 if im.tryfirst else 2 if im.trylast else 1,
                                             rank.get(im.plugin_name, len(rank))))

    def _collect(self, hook: str, kind: type[T], what: str) -> dict[str, T]:
        out: dict[str, T] = {}
        for plugin, result in self._each(hook):
            items = result if isinstance(result, list | tuple) else None
            if items is None or not all(isinstance(x, kind) for x in items):
                self._fail(plugin, f"hook {hook} must return a list of {kind.__name__}, "
                                   f"got {type(result).__name__}")
                continue
            for item in items:
                name = item.name
                if name in out:
                    self._fail(plugin, f"{what} {name!r} is already provided by another plugin;"
                                       " the first one loaded is kept")
                    continue
                out[name] = item
        return out

    def contributions(self) -> dict[str, dict[str, list[str]]]:
        """What each plugin adds, by plugin name: ``{"providers": [...], "budget_backends":
        [...], "ratelimit_stores": [...], "breaker_stores": [...], "scoring_rules": [...],
        "fallback_strategies": [...]}`` (names only; each registration hook is called once, so a failing one is
        reported once)."""
        out: dict[str, dict[str, list[str]]] = {}
        for hook, key in (("register_providers", "providers"),
                          ("register_budget_backends", "budget_backends"),
                          ("register_ratelimit_stores", "ratelimit_stores"),
                          ("register_breaker_stores", "breaker_stores"),
                          ("register_scoring_rules", "scoring_rules"),
                          ("register_fallback_strategies", "fallback_strategies")):
            for plugin, result in self._each(hook):
                names = [str(getattr(x, "name", x)) for x in result or ()] \
                    if isinstance(result, list | tuple) else []
                out.setdefault(plugin, {}).setdefault(key, []).extend(names)
        return out

    def provider_types(self) -> dict[str, ProviderType]:
        return self._collect("register_providers", ProviderType, "provider type")

    def scoring_rules(self) -> dict[str, ScoringRule]:
        return self._collect("register_scoring_rules", ScoringRule, "scoring rule")

    def fallback_strategies(self) -> dict[str, FallbackStrategyType]:
        return self._collect("register_fallback_strategies", FallbackStrategyType,
                             "fallback strategy")

    def budget_backends(self) -> dict[str, BudgetBackendType]:
        return self._collect("register_budget_backends", BudgetBackendType, "budget backend")

    def ratelimit_stores(self) -> dict[str, RateLimitStoreType]:
        return self._collect("register_ratelimit_stores", RateLimitStoreType,
                             "rate-limit store")

    def breaker_stores(self) -> dict[str, BreakerStoreType]:
        return self._collect("register_breaker_stores", BreakerStoreType, "breaker store")

    def token_counter(self, provider_of: Callable[[ModelCard], Provider]
                      ) -> Callable[[ModelCard, AIRequest | None, str | None], TokenCount | None]:
        """A counting function over the ``count_tokens`` hook (first non-None result wins).

        It runs for every budgeted or rate-limited request, so it calls the implementations
        itself, in :meth:`_each`'s order and with its failure isolation, from a plan made once
        per set of implementations (each function and which arguments it takes, passed by
        position as pluggy passes them): no generator, no dict of arguments per call."""
        self.load()
        caller = self._pm.hook.count_tokens
        plans: dict[tuple[Any, ...], list[tuple[str, Callable[..., Any], tuple[int, ...] | None]]] = {}

        def count(model: ModelCard, request: AIRequest | None, text: str | None
                  ) -> TokenCount | None:
            impls = tuple(caller.get_hookimpls())
            plan = plans.get(impls)
            if plan is None:
                plan = self._count_plan(impls, plans)
            values = (model, provider_of(model), request, text)
            for name, function, picks in plan:
                if self._trace:
                    log.debug("hook count_tokens -> plugin %s", name)
                try:
                    result = function(*values) if picks is None else \
                        function(*map(values.__getitem__, picks))
                except (Exception, SystemExit) as exc:  # a hook calling sys.exit() is a failing hook
                    self._fail(name, f"hook count_tokens raised {type(exc).__name__}: {exc}", exc)
                    continue
                if result is None:
                    continue
                # What the core reserves, settles and routes by: checked where it enters.
                n = getattr(result, "tokens", None)
                if type(result) is TokenCount and type(n) is int and 0 <= n <= MAX_USAGE_TOKENS \
                        and type(result.exact) is bool and (
                            # n >= least(request, text), for plain ASCII text without a call
                            (request is not None and (b := request._ascii_bytes) is not None
                             and n * MAX_TOKEN_BYTES >= b) or n >= least(request, text)):
                    return result
                problem = count_problem(result, least(request, text))
                if problem is None:
                    return result  # type: ignore[no-any-return]
                # The hook's failure: the next plugin (else the core's upper bound) counts.
                self._fail(name, f"hook count_tokens {problem} (model {model.id})")
            return None

        return count

    def _count_plan(self, impls: tuple[Any, ...],
                    plans: dict[tuple[Any, ...], list[tuple[str, Callable[..., Any],
                                                           tuple[int, ...] | None]]]
                    ) -> list[tuple[str, Callable[..., Any], tuple[int, ...] | None]]:
        """The ``count_tokens`` implementations ``impls`` in call order (:meth:`_each`'s),
        each with the positions in ``(model, provider, request, text)`` of the arguments it
        takes (None: all four, in that order)."""
        if len(plans) > 16:  # only after many (un)registrations
            plans.clear()
        plan = []
        for impl in self._ordered(list(impls)):
            picks = tuple(_COUNT_ARGS.index(a) for a in impl.argnames)
            plan.append((impl.plugin_name, impl.function, None if picks == (0, 1, 2, 3) else picks))
        plans[impls] = plan
        return plan

    def attempt_finished(self, event: AttemptEvent) -> None:
        for _ in self._each("on_attempt_finished", event=event):
            pass

    def request_finished(self, event: RequestEvent) -> None:
        for _ in self._each("on_request_finished", event=event):
            pass

    def has_observers(self) -> bool:
        self.load()
        return bool(self._pm.hook.on_attempt_finished.get_hookimpls()
                    or self._pm.hook.on_request_finished.get_hookimpls())

    def add_commands(self, cli: click.Group) -> None:
        for _ in self._each("register_commands", cli=cli):
            pass
