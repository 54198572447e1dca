"""Every hook a squirrel-models plugin can implement.

Hooks are synchronous; asynchronous work lives in the objects they return (providers, budget
backends, fallback strategies). A hookimpl may take any subset of a spec's arguments, so hooks
grow only by adding arguments. Implement them with the ``hookimpl`` marker::

    from squirrel_models import hookimpl

    @hookimpl
    def register_providers():
        return [ProviderType("mine", MyProvider)]

and declare one entry point in the ``squirrel_models`` group. Built-in implementations are
registered through the same manager (:mod:`squirrel_models.builtins`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .budget import BudgetBackendType
    from .events import AttemptEvent, RequestEvent
    from .fallback import FallbackStrategyType
    from .providers import Provider, ProviderType
    from .ratelimit import RateLimitStoreType
    from .scoring import ScoringRule
    from .sharedbreakers import BreakerStoreType
    from .types import AIRequest, ModelCard, TokenCount

PROJECT = "squirrel_models"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]


# --- registration: called once, when a ModelManager is built ---------------------------


@hookspec
def register_providers() -> list[ProviderType]:
    """Provider types this plugin offers.

    Called once per manager. Returns a list of :class:`~squirrel_models.providers.ProviderType`;
    configuration instantiates them by ``type`` name. Two plugins offering the same name: the
    first loaded wins and the clash is logged (an error in strict mode).
    """
    # A spec has no body: pluggy calls the implementations, never this.


@hookspec
def register_scoring_rules() -> list[ScoringRule]:
    """Scoring rules this plugin offers, by name.

    Returns a list of :class:`~squirrel_models.scoring.ScoringRule`; a rule is used when
    ``[scoring.weights]`` gives it a weight (built-in rules have default weights).
    """


@hookspec
def register_fallback_strategies() -> list[FallbackStrategyType]:
    """Fallback strategies this plugin offers, by name.

    Returns a list of :class:`~squirrel_models.fallback.FallbackStrategyType`; the chain uses
    those named in ``[fallback] strategies``, in that order.
    """


@hookspec
def register_budget_backends() -> list[BudgetBackendType]:
    """Budget backends this plugin offers, by name (``[budget] backend``).

    Returns a list of :class:`~squirrel_models.budget.BudgetBackendType`.
    """


@hookspec
def register_ratelimit_stores() -> list[RateLimitStoreType]:
    """Rate-limit stores this plugin offers, by name (``[rate_limits] store``).

    Called once per manager, when it is built. Returns a list of
    :class:`~squirrel_models.ratelimit.RateLimitStoreType`; the built-in store is ``memory``.
    Two plugins offering the same name: the first loaded wins and the clash is logged.
    """


@hookspec
def register_breaker_stores() -> list[BreakerStoreType]:
    """Breaker stores this plugin offers, by name (``[circuit_breaker] shared``): where
    instances share their circuit breakers' cooldowns (see
    :mod:`squirrel_models.sharedbreakers`).

    Called once per manager, when ``[circuit_breaker] shared`` names a store. Returns a list
    of :class:`~squirrel_models.sharedbreakers.BreakerStoreType`; there is no built-in store
    (unset: each process keeps its own breakers). Two plugins offering the same name: the
    first loaded wins and the clash is logged.
    """


# --- per request -------------------------------------------------------------------------


@hookspec(firstresult=True)
def count_tokens(
    model: ModelCard, provider: Provider, request: AIRequest | None, text: str | None
) -> TokenCount | None:
    """Count tokens for ``model``: the prompt of ``request`` (chat template and message
    overhead included) when ``request`` is given, else the plain ``text`` (an answer).

    ``provider`` is the instance serving ``model`` (a local provider counts with its loaded
    tokenizer). Return None for models you do not know. First non-None result wins; when no
    plugin answers, the core uses an upper bound (UTF-8 bytes plus per-message overhead)
    marked ``exact=False``. A prompt whose upper bound reaches ``tokens.OFF_LOOP_TOKENS`` is
    counted in a worker thread (the event loop serves other requests meanwhile): be
    thread-safe.
    """


# --- observers ---------------------------------------------------------------------------


@hookspec
def on_attempt_finished(event: AttemptEvent) -> None:
    """Called after every upstream attempt (success, failure or skip), before the next one.

    ``event`` is an :class:`~squirrel_models.events.AttemptEvent`. Runs on the event loop:
    do no blocking I/O here. An exception is logged and swallowed (strict mode: raised).
    """


@hookspec
def on_request_finished(event: RequestEvent) -> None:
    """Called once per request when it ends, with a response or an error.

    ``event`` is a :class:`~squirrel_models.events.RequestEvent`. Same rules as
    :func:`on_attempt_finished`.
    """


# --- command line ------------------------------------------------------------------------


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``squirrel`` command line: ``cli.add_command(...)``.

    Called when the CLI starts, once.
    """


def spec_names() -> list[str]:
    """Names of every hookspec in this module (used by the docs coverage test)."""
    return [n for n, v in globals().items() if callable(v) and hasattr(v, PROJECT + "_spec")]
