"""``ManagerBase``: the attributes of a :class:`~squirrel_models.manager.ModelManager` that its
mixins (``Assembly``, ``Attempts``) read, declared once for the type checker (internal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["ManagerBase"]

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .budget import BudgetBackend, PendingRow
    from .config import Config
    from .fallback import CircuitBreakers
    from .limiter import RateLimiter
    from .metrics import Metrics
    from .plugins import PluginManager
    from .providers import Provider
    from .selection import ModelSelector
    from .sharedbreakers import SharedBreakers
    from .stats import StatsRegistry
    from .tokens import TokenManager
    from .types import ModelCard


class ManagerBase:
    """What ``ModelManager`` sets up (see ``manager.py`` and ``assembly.py``)."""

    if TYPE_CHECKING:
        config: Config
        plugins: PluginManager
        metrics: Metrics
        stats: StatsRegistry
        breakers: CircuitBreakers
        limiter: RateLimiter
        selector: ModelSelector
        tokens: TokenManager
        budget_backend: BudgetBackend
        _providers: dict[str, Provider]
        _shared: SharedBreakers | None
        _ledger_backend: bool
        _settle_rows: bool
        _inline: bool
        _observers: bool
        _record_pending: Callable[[Sequence[PendingRow]], None] | None
        _native_deadline: bool
        _started: bool

        def _provider_of(self, card: ModelCard) -> Provider: ...
